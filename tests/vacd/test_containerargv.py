"""The podman and apptainer argv lists for container machines (vacd.backends.containerargv).

The apptainer argv is checked against apptainer's documented `exec` interface (flags of
apptainer 1.1+ `apptainer exec --help`); no apptainer binary runs here (Debian 12 has none).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vacd.backends.containerargv import (
    Bind,
    ContainerLimits,
    apptainer_exec_argv,
    docker_binds,
    podman_image_reference,
    podman_run_argv,
    singularity_binds,
)

MD = Path("/var/lib/vac/machines/1700000000_lhcb_f1-03.example.org")
LIMITS = ContainerLimits(processors=2, memory_mib=4096, nofile=20000, nproc=96367)


def options(argv: list[str], flag: str) -> list[str]:
    return [argv[index + 1] for index, word in enumerate(argv) if word == flag]


@pytest.mark.parametrize("root_image, reference", [
    ("docker://busybox", "docker.io/library/busybox"),
    ("docker://busybox:1.36", "docker.io/library/busybox:1.36"),
    ("docker://lhcbdirac/vac:latest", "docker.io/lhcbdirac/vac:latest"),
    ("docker://gitlab-registry.cern.ch/lhcb/vac:2", "gitlab-registry.cern.ch/lhcb/vac:2"),
    ("docker://localhost/vac-test-busybox:1", "localhost/vac-test-busybox:1"),
    ("docker://registry:5000/x", "registry:5000/x"),
])
def test_docker_image_names_as_vac03_wrote_them_resolve_as_docker_pulled_them(root_image: str, reference: str) -> None:
    assert podman_image_reference(root_image) == reference


@pytest.mark.parametrize("root_image", ["busybox", "docker://", "docker://-x", "docker://a b", "docker://a/../b",
                                        "docker://$(reboot)"])
def test_a_malformed_docker_image_is_refused(root_image: str) -> None:
    with pytest.raises(ValueError):
        podman_image_reference(root_image)


@given(st.text(max_size=40))
def test_any_image_text_gives_a_reference_or_valueerror(text: str) -> None:
    try:
        reference = podman_image_reference("docker://" + text)
    except ValueError:
        return
    assert not reference.startswith("-") and " " not in reference


def test_docker_binds_are_vac03s_paths_and_modes() -> None:
    binds = docker_binds(MD, has_user_data=True, cvmfs=True, tmp_binds=(("/scratch", MD / "mnt/_scratchx"),))
    assert binds == (
        Bind(MD / "machinefeatures", "/etc/machinefeatures", True),
        Bind(MD / "jobfeatures", "/etc/jobfeatures", True),
        Bind(MD / "joboutputs", "/var/spool/joboutputs", False),
        Bind(MD / "user_data", "/user_data", True),
        Bind(Path("/cvmfs"), "/cvmfs", True),
        Bind(MD / "mnt/_scratchx", "/scratch", False),
    )


def test_no_user_data_and_no_cvmfs_bind_nothing_for_them() -> None:
    targets = [bind.target for bind in docker_binds(MD, has_user_data=False, cvmfs=False)]
    assert targets == ["/etc/machinefeatures", "/etc/jobfeatures", "/var/spool/joboutputs"]


def test_podman_run_argv_sets_limits_labels_network_and_runs_the_command_without_a_shell() -> None:
    argv = podman_run_argv(name="f1-03.example.org", uuid="u-1", ordinal=3, image="docker.io/library/busybox",
                           command="/user_data", binds=docker_binds(MD, has_user_data=True, cvmfs=False),
                           limits=LIMITS, cgroup_parent="/vac/f1-03.example.org",
                           network_namespace=Path("/run/netns/vac-slot-03"), runtime="runc")
    assert argv[:5] == ["podman", "--cgroup-manager", "cgroupfs", "run", "--detach"]
    assert argv[-2:] == ["docker.io/library/busybox", "/user_data"]
    assert options(argv, "--name") == options(argv, "--hostname") == ["f1-03.example.org"]
    assert options(argv, "--label") == ["vac.uuid=u-1", "vac.machine=f1-03.example.org", "vac.slot=3"]
    assert options(argv, "--cpus") == ["2"] and options(argv, "--cpu-shares") == ["2048"]
    assert options(argv, "--memory") == ["4096m"]
    assert options(argv, "--ulimit") == ["nofile=20000:20000", "nproc=96367:96367"]
    assert options(argv, "--network") == ["ns:/run/netns/vac-slot-03"]
    assert options(argv, "--runtime") == ["runc"]
    assert options(argv, "--cap-drop") == ["NET_ADMIN", "NET_RAW"]
    assert options(argv, "--cgroup-parent") == ["/vac/f1-03.example.org"]
    assert options(argv, "--volume") == [
        f"{MD}/machinefeatures:/etc/machinefeatures:ro", f"{MD}/jobfeatures:/etc/jobfeatures:ro",
        f"{MD}/joboutputs:/var/spool/joboutputs:rw", f"{MD}/user_data:/user_data:ro"]
    assert options(argv, "--env") == ["MACHINEFEATURES=/etc/machinefeatures", "JOBFEATURES=/etc/jobfeatures",
                                      "JOBOUTPUTS=/var/spool/joboutputs"]
    assert not any(word in ("sh", "/bin/sh", "-c") for word in argv)


def test_podman_run_argv_without_runtime_or_network_leaves_podman_its_runtime_and_no_network() -> None:
    argv = podman_run_argv(name="n", uuid="u", ordinal=0, image="i", command="/c", binds=(), limits=LIMITS,
                           cgroup_parent="/vac/n", network_namespace=None, runtime=None)
    assert "--runtime" not in argv and options(argv, "--network") == ["none"]


@pytest.mark.parametrize("source", ["/a:b", "/a,b", "relative"])
def test_a_bind_path_that_would_change_the_options_is_refused(source: str) -> None:
    with pytest.raises(ValueError, match="bind source"):
        podman_run_argv(name="n", uuid="u", ordinal=0, image="i", command="/c", binds=(Bind(Path(source), "/x", True),),
                        limits=LIMITS, cgroup_parent="/vac/n", network_namespace=None, runtime=None)
    with pytest.raises(ValueError, match="bind source"):
        apptainer_exec_argv(image="/i.sif", command="/c", binds=(Bind(Path(source), "/x", True),),
                            workdir=MD / "mnt")


def test_apptainer_exec_argv_is_vac03s_singularity_exec_with_apptainers_documented_flags() -> None:
    argv = apptainer_exec_argv(image="/cvmfs/unpacked.cern.ch/lhcb/x", command="/user_data",
                               binds=singularity_binds(MD, has_user_data=True, cvmfs=True),
                               workdir=MD / "mnt")
    assert argv[:3] == ["apptainer", "exec", "--contain"]
    assert options(argv, "--workdir") == [f"{MD}/mnt"]
    assert not {"--net", "--network", "--uts", "--hostname"} & set(argv)  # the launcher's, not apptainer's
    assert options(argv, "--bind") == [
        f"{MD}/machinefeatures:/tmp/machinefeatures:ro", f"{MD}/jobfeatures:/tmp/jobfeatures:ro",
        f"{MD}/joboutputs:/tmp/joboutputs", f"{MD}/user_data:/user_data:ro", "/cvmfs:/cvmfs:ro"]
    assert argv[-2:] == ["/cvmfs/unpacked.cern.ch/lhcb/x", "/user_data"]
