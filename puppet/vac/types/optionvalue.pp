# @summary The value of one vac.conf option given in Hiera.
#
# One line of text, a number, a boolean (written `true` or `false`) or a list of words
# (written space-separated, as in `factories`).
type Vac::Optionvalue = Variant[
  Pattern[/\A[^\r\n]*\z/],
  Integer,
  Float,
  Boolean,
  Array[Variant[Pattern[/\A\S+\z/], Integer], 1],
]
