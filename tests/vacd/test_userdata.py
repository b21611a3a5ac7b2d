"""The ##user_data_*## substitutions (§6.5, acceptance 15; HSF-TN-2016-04)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vacd.userdata import (
    FEATURE_LOCATIONS,
    LEFTOVER_PATTERN,
    UserDataContext,
    feature_locations,
    merge_options,
    render_user_data,
)

CONTEXT = UserDataContext(
    space="vac01.example.com",
    site="UKI-TEST",
    machinetype="example",
    machine_hostname="f1-03.example.com",
    manager_version="Vac 04.00.00a1",
    manager_hostname="f1.example.com",
    uuid="1b4e28ba-2fa1-11d2-883f-0016d3cca427",
    locations=feature_locations("vm-raw"),
)


@pytest.mark.parametrize(
    "pattern, value",
    [
        ("space", "vac01.example.com"),
        ("site", "UKI-TEST"),
        ("machinetype", "example"),
        ("machine_hostname", "f1-03.example.com"),
        ("manager_version", "Vac 04.00.00a1"),
        ("manager_hostname", "f1.example.com"),
        ("uuid", "1b4e28ba-2fa1-11d2-883f-0016d3cca427"),
        ("machinefeatures_url", "http://169.254.169.253/machinefeatures"),
        ("jobfeatures_url", "http://169.254.169.253/jobfeatures"),
        ("joboutputs_url", "http://169.254.169.253/joboutputs"),
        # Deprecated aliases (§6.5 step 3).
        ("vmtype", "example"),
        ("vm_hostname", "f1-03.example.com"),
        ("vmlm_version", "Vac 04.00.00a1"),
        ("vmlm_hostname", "f1.example.com"),
    ],
)
def test_builtin_substitutions(pattern: str, value: str) -> None:
    assert render_user_data(f"<##user_data_{pattern}##>", CONTEXT) == f"<{value}>"


@pytest.mark.parametrize(
    "model, machinefeatures, joboutputs",
    [
        ("cernvm3", "http://169.254.169.253/machinefeatures", "http://169.254.169.253/joboutputs"),
        ("docker", "/etc/machinefeatures", "/var/spool/joboutputs"),
        ("singularity", "/tmp/machinefeatures", "/tmp/joboutputs"),
    ],
)
def test_mjf_locations_follow_the_machine_model(model: str, machinefeatures: str, joboutputs: str) -> None:
    context = replace(CONTEXT, locations=FEATURE_LOCATIONS[model])
    rendered = render_user_data("##user_data_machinefeatures_url## ##user_data_joboutputs_url##", context)
    assert rendered == f"{machinefeatures} {joboutputs}"


def test_optional_values_are_substituted_only_when_known() -> None:
    template = "[##user_data_root_image_url##][##user_data_url##][##user_data_option_x509_proxy##]"
    assert render_user_data(template, CONTEXT) == "[][][]"
    context = replace(
        CONTEXT, root_image_url="https://images.example/x.img", user_data_url="https://ud.example/t", x509_proxy="PEM"
    )
    assert render_user_data(template, context) == "[https://images.example/x.img][https://ud.example/t][PEM]"


def test_options_and_file_contents() -> None:
    context = replace(CONTEXT, options={"queue": "long"}, file_contents={"hostkey": "KEY\n"})
    rendered = render_user_data(
        "q=##user_data_option_queue## k1=##user_data_option_hostkey## k2=##user_data_file_hostkey##", context
    )
    assert rendered == "q=long k1=KEY\n k2=KEY\n"


def test_an_option_beats_a_file_of_the_same_name() -> None:
    context = replace(CONTEXT, options={"x": "option"}, file_contents={"x": "file"})
    assert render_user_data("##user_data_option_x## ##user_data_file_x##", context) == "option file"


def test_unknown_patterns_are_removed_and_other_text_kept() -> None:
    rendered = render_user_data("a##user_data_zzz##b ##user_data_option_missing## ##other## ##user_data_A##", CONTEXT)
    assert rendered == "ab  ##other## ##user_data_A##"


def test_inserted_values_are_not_expanded_again_but_leftovers_in_them_are_removed() -> None:
    context = replace(CONTEXT, options={"a": "##user_data_space##", "b": "x##user_data_nothing##y"})
    assert render_user_data("##user_data_option_a##|##user_data_option_b##", context) == "|xy"


def test_settings_defaults_are_overridden_by_the_machinetype_in_either_form() -> None:
    options, files = merge_options(
        default_options={"site_option": "s", "both": "default", "became_file": "default"},
        default_files={"site_file": "/etc/s", "became_option": "/etc/default"},
        machinetype_options={"both": "machinetype", "became_option": "value"},
        machinetype_files={"became_file": "files/x"},
    )
    assert options == {"site_option": "s", "both": "machinetype", "became_option": "value"}
    assert files == {"site_file": "/etc/s", "became_file": "files/x"}


@given(st.lists(st.sampled_from(["a", "#", "_", " ", "##user_", "##user_data_", "data_x##", "##user_data_space##", "##"]), max_size=20))
def test_no_user_data_pattern_survives_rendering(pieces: list[str]) -> None:
    assert not LEFTOVER_PATTERN.search(render_user_data("".join(pieces), CONTEXT))


def test_removing_a_leftover_cannot_assemble_a_new_one() -> None:
    assert render_user_data("##user_##user_data_x##data_y##", CONTEXT) == ""
