"""vacd: the vacuum-model factory daemon (a Python 3 successor to GridPP's Vac 03)."""

VERSION = "4.0.0a1"  # the same as setup.cfg and vac.spec
# What peers and guests see as the manager version; Vac sent "Vac <version>" (§3.2, §6.5).
MANAGER_VERSION = "Vac " + VERSION
