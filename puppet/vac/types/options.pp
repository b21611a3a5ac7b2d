# @summary The options of one vac.conf section, by option name (`vac_space`, `target_share` ...).
type Vac::Options = Hash[Pattern[/\A[a-z][a-z0-9_]*\z/], Vac::Optionvalue]
