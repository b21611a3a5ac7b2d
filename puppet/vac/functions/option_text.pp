# @summary How vac.conf spells an option's value: lists space-separated, booleans as
#   `true` or `false`, anything else as its text.
#
# @param value
#   A value from `vac::settings` or `vac::machinetypes`.
# @return [String] The text after `option = ` in vac.conf.
function vac::option_text(Vac::Optionvalue $value) >> String {
  $value ? {
    Array   => $value.join(' '),
    default => String($value),
  }
}
