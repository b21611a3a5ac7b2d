"""vacd: the vacuum-model factory daemon (a Python 3 successor to GridPP's Vac 03)."""

VERSION = "04.00.00a1"
# What peers and guests see as the manager version; Vac sent "Vac <version>" (§3.2, §6.5).
MANAGER_VERSION = "Vac " + VERSION
