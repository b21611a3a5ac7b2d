# @summary The source list of a vac configuration tree, most specific first.
#
# With `sourceselect => all`, the first source that holds a file of a given name wins
# (behaviour reference §10.4): the factory's own directory, then one directory per
# subspace of the space, then the space's, then the site-wide one.
#
# @param path
#   The tree's location on the Puppet file server, such as `modules/vac/vac.d`.
# @param fqdn
#   The factory's fully qualified name.
# @param space
#   The vac space, such as `vac01.example.org`.
# @param subspaces
#   The factory's subspaces, in order; each gives a `<space>:<subspace>` directory.
# @return [Array[String[1]]] `puppet:///` URLs in the order Puppet should try them.
function vac::tree_sources(
  String[1] $path,
  String[1] $fqdn,
  String[1] $space,
  Array[String[1]] $subspaces,
) >> Array[String[1]] {
  # `path` names the module itself (modules/vac/vac.d, modules/site_vac/vac.d ...).
  $base = "puppet:///${path}" # lint:ignore:puppet_url_without_modules
  flatten(
    "${base}/${fqdn}",
    $subspaces.map |String[1] $subspace| { "${base}/${space}:${subspace}" },
    "${base}/${space}",
    "${base}/site",
  )
}
