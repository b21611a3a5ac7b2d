"""The site simulator: many real vacd factories on virtual time, over a simulated network.

`python -m vacd.sim --help` runs a scenario from the command line; `vacd.sim.scenario` holds
what a site is and what a run measured, `vacd.sim.site` runs it (`run_scenario`) with the
real `vacd.factory.Factory` on every factory and only the world simulated (clock, pool,
backend, network), `vacd.sim.census` runs one big census (`simulate_census`),
`vacd.sim.events` the virtual clock and lossy network, `vacd.sim.vac03` Vac 03's census and
`vacd.sim.vac03_site` its loop (the baseline, modelled: Vac 03 is not our factory),
`vacd.sim.model` the statistical census used for sites too large for real datagrams.
"""

from vacd.sim.events import NetworkConditions
from vacd.sim.census import simulate_census
from vacd.sim.scenario import MachinetypeScenario, Outcome, Scenario, SiteRun, standard_machinetypes
from vacd.sim.site import run_scenario

__all__ = [
    "MachinetypeScenario",
    "NetworkConditions",
    "Outcome",
    "Scenario",
    "SiteRun",
    "run_scenario",
    "simulate_census",
    "standard_machinetypes",
]
