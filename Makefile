# Build and install vac outside and inside RPM builds.
#
#   make sdist         $(DIST_DIR)/vac-VERSION.tar.gz (default dist/), the tarball vac.spec builds from
#   make rpm-sources   the tarball and vac.spec in $(RPM_SOURCES_DIR), for rpmbuild/COPR/Koji
#   make srpm | rpm    source or binary RPMs with rpmbuild under build/rpmbuild
#   make wheel         build/wheel/vac-VERSION-py3-none-any.whl
#   make install       what vac.spec's %install installs, under $(DESTDIR)
#
# vac.spec builds and installs the Python packages with the %pyproject_* macros and calls
# `make install-data` in %install for everything else, so an install from the tarball and
# the RPM put the same files in the same places.

NAME            := vac
VERSION         := $(shell sed -n 's/^version[[:space:]]*=[[:space:]]*//p' setup.cfg)
SPEC_VERSION    := $(shell sed -n 's/^%global[[:space:]]*pypi_version[[:space:]]*//p' vac.spec)

PYTHON          ?= python3
DESTDIR         ?=
PREFIX          ?= /usr
SBINDIR         ?= $(PREFIX)/sbin
DATADIR         ?= $(PREFIX)/share
MANDIR          ?= $(DATADIR)/man
SYSCONFDIR      ?= /etc
LOCALSTATEDIR   ?= /var
UNITDIR         ?= $(PREFIX)/lib/systemd/system
INITDIR         ?= $(SYSCONFDIR)/rc.d/init.d
SYSCTLDIR       ?= $(PREFIX)/lib/sysctl.d
PRESETDIR       ?= $(PREFIX)/lib/systemd/system-preset
# bash-completion loads completions/vac from here when vac is first completed.
BASHCOMPLETIONDIR ?= $(DATADIR)/bash-completion/completions
STATEDIR        ?= $(LOCALSTATEDIR)/lib/vac
# Where the vacd and vacquery packages go; RPM builds pass %{python3_sitelib}.
PYTHON_SITELIB  ?= $(shell $(PYTHON) -c 'import sysconfig; print(sysconfig.get_path("purelib", "posix_prefix", {"base": "$(PREFIX)", "platbase": "$(PREFIX)"}))')
# systemd (vacd.service) or sysv (/etc/rc.d/init.d/vacd).
INIT_SYSTEM     ?= systemd
# Written to the dist-info INSTALLER file: the tool that manages the installed files.
PYTHON_INSTALLER ?= make

WHEEL_DIR       ?= build/wheel
DIST_DIR        ?= dist
RPM_SOURCES_DIR ?= $(DIST_DIR)
RPM_TOPDIR      ?= $(CURDIR)/build/rpmbuild
RPMBUILD        ?= rpmbuild
RPMBUILD_FLAGS  ?=

SCRIPTS         := vacd vac check-vacd
APEL_UNITS      := vac-ssmsend.service vac-ssmsend.timer vac-apel-sync.service vac-apel-sync.timer
MAN_PAGES       := man/vac.1 man/vac.conf.5 man/vacd.8 man/check-vacd.8 man/viab-generate.8
# The state directory tree of behaviour reference §1.4 / §10.1 (vacd.paths.Paths).
STATE_DIRS      := tmp imagecache machinetypes pipescache apel-archive apel-outgoing apel-held \
                   slots finishes machines space-census
PIP_FLAGS       := --no-deps --no-index --no-cache-dir --disable-pip-version-check

.PHONY: all sdist rpm-sources srpm rpm wheel install install-python install-data check-version clean

all: wheel

check-version:
	@if [ "$(VERSION)" != "$(SPEC_VERSION)" ]; then \
	    echo "version mismatch: setup.cfg says $(VERSION), vac.spec pypi_version says $(SPEC_VERSION)" >&2; \
	    exit 1; \
	fi

sdist: check-version
	$(PYTHON) -c 'import setuptools.build_meta as backend; print(backend.build_sdist("$(DIST_DIR)"))'

rpm-sources: sdist
	install -d $(RPM_SOURCES_DIR)
	if [ "$(abspath $(RPM_SOURCES_DIR))" != "$(abspath $(DIST_DIR))" ]; then \
	    install -m 0644 $(DIST_DIR)/$(NAME)-$(VERSION).tar.gz $(RPM_SOURCES_DIR)/; \
	fi
	install -m 0644 vac.spec $(RPM_SOURCES_DIR)/

srpm rpm: rpm-sources
	@command -v $(RPMBUILD) >/dev/null 2>&1 || { echo "make $@: $(RPMBUILD) not found (dnf install rpm-build)" >&2; exit 1; }
	$(RPMBUILD) $(RPMBUILD_FLAGS) --define "_topdir $(RPM_TOPDIR)" \
	    --define "_sourcedir $(abspath $(RPM_SOURCES_DIR))" \
	    $(if $(filter srpm,$@),-bs,-ba) vac.spec

wheel:
	# setuptools reuses build/lib: a module deleted from the tree would stay in the wheel.
	rm -rf $(WHEEL_DIR) build/lib build/bdist.*
	$(PYTHON) -m pip wheel $(PIP_FLAGS) --no-build-isolation --wheel-dir $(WHEEL_DIR) .

install: install-python install-data

install-python:
	@ls $(WHEEL_DIR)/$(NAME)-*.whl >/dev/null 2>&1 || { echo "make install: run 'make wheel' first" >&2; exit 1; }
	$(PYTHON) -m pip install $(PIP_FLAGS) --no-compile --upgrade \
	    --target "$(DESTDIR)$(PYTHON_SITELIB)" $(WHEEL_DIR)/$(NAME)-*.whl
	install -d "$(DESTDIR)$(SBINDIR)"
	for script in $(SCRIPTS); do \
	    mv -f "$(DESTDIR)$(PYTHON_SITELIB)/bin/$$script" "$(DESTDIR)$(SBINDIR)/$$script" || exit 1; \
	done
	rmdir "$(DESTDIR)$(PYTHON_SITELIB)/bin"
	# pip's RECORD lists the scripts where --target put them, not /usr/sbin; a system
	# package manager may omit it (PEP 627) and name itself as the INSTALLER.
	for info in "$(DESTDIR)$(PYTHON_SITELIB)"/$(NAME)-*.dist-info; do \
	    rm -f "$$info/RECORD" "$$info/direct_url.json"; \
	    echo "$(PYTHON_INSTALLER)" > "$$info/INSTALLER"; \
	done

install-data:
	for page in $(MAN_PAGES); do \
	    section=$${page##*.}; \
	    install -D -m 0644 "$$page" "$(DESTDIR)$(MANDIR)/man$$section/$${page##*/}" || exit 1; \
	done
ifeq ($(INIT_SYSTEM),systemd)
	install -D -m 0644 etc/vacd.service "$(DESTDIR)$(UNITDIR)/vacd.service"
	# The APEL jobs: ssmsend hourly, `vac apel-sync` daily; the preset enables the timers.
	for unit in $(APEL_UNITS); do \
	    install -D -m 0644 "etc/$$unit" "$(DESTDIR)$(UNITDIR)/$$unit" || exit 1; \
	done
	install -D -m 0644 etc/systemd-preset/85-vac.preset "$(DESTDIR)$(PRESETDIR)/85-vac.preset"
else
	install -D -m 0755 etc/init.d/vacd "$(DESTDIR)$(INITDIR)/vacd"
endif
	install -D -m 0644 etc/sysconfig/vacd "$(DESTDIR)$(SYSCONFDIR)/sysconfig/vacd"
	install -D -m 0644 etc/bash-completion/vac "$(DESTDIR)$(BASHCOMPLETIONDIR)/vac"
	install -D -m 0644 etc/logrotate.d/vacd "$(DESTDIR)$(SYSCONFDIR)/logrotate.d/vacd"
	# Read by systemd-sysctl at boot and by %post; an admin overrides it in /etc/sysctl.d.
	install -D -m 0644 etc/sysctl.d/90-vac-vacquery.conf "$(DESTDIR)$(SYSCTLDIR)/90-vac-vacquery.conf"
	install -D -m 0644 etc/vac-ssmsend-prod.cfg "$(DESTDIR)$(SYSCONFDIR)/apel/vac-ssmsend-prod.cfg"
	install -D -m 0644 etc/squid.conf.vac "$(DESTDIR)$(SYSCONFDIR)/squid/squid.conf.vac"
	install -d -m 0755 "$(DESTDIR)$(SYSCONFDIR)/vac.d"
	install -d -m 0755 "$(DESTDIR)$(STATEDIR)"
	for directory in $(STATE_DIRS); do \
	    install -d -m 0755 "$(DESTDIR)$(STATEDIR)/$$directory" || exit 1; \
	done
	echo "VERSION=$(VERSION)" > "$(DESTDIR)$(STATEDIR)/VERSION"
	chmod 0644 "$(DESTDIR)$(STATEDIR)/VERSION"
	# The Puppet module and the Vac-in-a-Box generator, for the admin to copy elsewhere.
	for directory in manifests functions types templates data; do \
	    install -d "$(DESTDIR)$(DATADIR)/$(NAME)/puppet/vac/$$directory" || exit 1; \
	done
	install -m 0644 puppet/vac/metadata.json puppet/vac/README.md puppet/vac/REFERENCE.md puppet/vac/hiera.yaml \
	    "$(DESTDIR)$(DATADIR)/$(NAME)/puppet/vac/"
	install -m 0644 puppet/vac/manifests/*.pp "$(DESTDIR)$(DATADIR)/$(NAME)/puppet/vac/manifests/"
	install -m 0644 puppet/vac/functions/*.pp "$(DESTDIR)$(DATADIR)/$(NAME)/puppet/vac/functions/"
	install -m 0644 puppet/vac/types/*.pp "$(DESTDIR)$(DATADIR)/$(NAME)/puppet/vac/types/"
	install -m 0644 puppet/vac/templates/*.epp "$(DESTDIR)$(DATADIR)/$(NAME)/puppet/vac/templates/"
	install -m 0644 puppet/vac/data/*.yaml "$(DESTDIR)$(DATADIR)/$(NAME)/puppet/vac/data/"
	install -d "$(DESTDIR)$(DATADIR)/$(NAME)/kickstart/templates"
	install -m 0755 kickstart/viab-generate "$(DESTDIR)$(DATADIR)/$(NAME)/kickstart/"
	install -m 0644 kickstart/README.md kickstart/example-site.json "$(DESTDIR)$(DATADIR)/$(NAME)/kickstart/"
	install -m 0644 kickstart/templates/* "$(DESTDIR)$(DATADIR)/$(NAME)/kickstart/templates/"
	# Prometheus alerting rules for vacd's /metrics, for prometheus.yml's rule_files.
	install -D -m 0644 etc/prometheus/vac-alerts.yml "$(DESTDIR)$(DATADIR)/$(NAME)/prometheus/vac-alerts.yml"

clean:
	rm -rf build $(DIST_DIR) $(NAME).egg-info
