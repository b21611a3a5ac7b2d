# @summary How vac.conf spells an option's value.
#
# Lists space-separated, booleans as `true` or `false`, anything else as its text.
#
# @param value
#   A value from `vac::settings` or `vac::machinetypes`.
# @return [String] The text after `option = ` in vac.conf.
function vac::option_text(Vac::Optionvalue $value) >> String {
  $value ? {
    Array   => $value.join(' '),
    # %p writes 2.5 as 2.5; String()'s default for a Float would write 2.500000.
    Float   => String($value, '%p'),
    default => String($value),
  }
}
