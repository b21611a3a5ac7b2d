# @summary Installs vac on a factory and keeps its configuration, vacd and the host tuned.
#
# The work is done by the private classes `vac::install` (packages), `vac::config`
# (files) and `vac::service` (services, sysctl and firewalld changes), contained in that
# order. The parameters' defaults are the module's Hiera data (`data/common.yaml`).
#
# Keeps Vac 03's Puppet class (behaviour reference §10.4), for EL9 with systemd:
#
# * `/etc/vac.d` and `/var/lib/vac/machinetypes` are recursive, purged trees built from
#   several file-server directories, most specific first: `<path>/<fqdn>`, then
#   `<path>/<space>:<subspace>` for `subspace` and `subspace1` to `subspace9` in that
#   order, then `<path>/<space>`, then `<path>/site`. The first directory holding a file
#   of a given name wins, so one factory or one subspace can override a file of the
#   space or of the site. Unless Hiera fills it (below), `/etc/vac.conf` is left to
#   local overrides.
# * A change in either tree, or in the vac.conf from Hiera, reloads vacd (SIGHUP), never restarts it; vacd also re-reads
#   its configuration on every pass.
# * Package `vac`; service `vacd` after EL9's socket-activated modular libvirt daemons
#   (`virtqemud.socket`, `virtnetworkd.socket`, as EL9 installs them), or after `libvirtd`
#   with `libvirt_monolithic`; `ksm` and `ksmtuned` with Vac's KSM tuning;
#   `vm.overcommit_memory = 1`, VacQuery's 16 MiB socket buffer maxima
#   (`net.core.rmem_max`, `wmem_max`), a root SSH key pair for `root_public_key`.
# * Optionally: `/etc/vac.conf` rendered from the Hiera hashes `vac::settings` and
#   `vac::machinetypes` and checked with `vacd --check-config --config` before it is put
#   in place; the site's VacQuery key in `vacquery_key_file` (0600).
# * Unless `manage_firewall` is false: firewalld services for VacQuery (995/udp) and the
#   metadata and MJF servers (80/tcp), added to their zones.
# * Optionally: an NRPE command running check-vacd, the APEL certificate and key for
#   ssmsend, and a local Squid made by `vac squid-conf` with the space's factories as
#   siblings.
#
# @example A factory whose configuration comes from the `site_vac` module
#   class { 'vac':
#     space          => 'vac01.example.org',
#     subspace       => 'gpu',
#     etc_path       => 'modules/site_vac/vac.d',
#     nagios_nrpe    => true,
#     apel_cert_path => 'puppet:///modules/site_vac/apel/hostcert.pem',
#     apel_key_path  => 'puppet:///modules/site_vac/apel/hostkey.pem',
#   }
#
# @example vac.conf and the VacQuery key (in Hiera: vac::settings, vac::machinetypes, vac::vacquery_key)
#   class { 'vac':
#     settings     => {
#       'vac_space' => 'vac01.example.org',
#       'factories' => ['factory1.example.org', 'factory2.example.org'],
#     },
#     machinetypes => {
#       'lhcb' => { 'target_share' => 3, 'root_image' => 'https://lhcb.example.org/cernvm4.iso' },
#     },
#     vacquery_key => Sensitive('a site key of at least sixteen bytes'),
#   }
#
# @param space
#   The vac space this factory belongs to; must match `vac_space` in vac.conf.
#   Default: `vac01.%{facts.networking.domain}`.
# @param subspace
#   A group of the space's factories that share files; see the source order above.
#   Default: `undef`.
# @param subspace1
#   A further subspace, after `subspace`; likewise `subspace2` to `subspace9`.
#   Default: `undef`.
# @param subspace2
#   See `subspace1`.
#   Default: `undef`.
# @param subspace3
#   See `subspace1`.
#   Default: `undef`.
# @param subspace4
#   See `subspace1`.
#   Default: `undef`.
# @param subspace5
#   See `subspace1`.
#   Default: `undef`.
# @param subspace6
#   See `subspace1`.
#   Default: `undef`.
# @param subspace7
#   See `subspace1`.
#   Default: `undef`.
# @param subspace8
#   See `subspace1`.
#   Default: `undef`.
# @param subspace9
#   See `subspace1`.
#   Default: `undef`.
# @param etc_path
#   File-server path (after `puppet:///`) of the directories whose files go to /etc/vac.d.
#   Default: `modules/vac/vac.d`.
# @param machinetypes_path
#   File-server path of the directories whose files go to /var/lib/vac/machinetypes.
#   Default: `modules/vac/machinetypes`.
# @param settings
#   Options of vac.conf's `[settings]` section, by name (see vac.conf(5)), such as
#   `{ 'vac_space' => 'vac01.example.org', 'factories' => ['f1.example.org', 'f2.example.org'] }`.
#   Lists are written space-separated, booleans as `true`/`false`. With this, `machinetypes`
#   or `vacquery_key`, the class writes `/etc/vac.conf` (mode 0600, read after
#   `/etc/vac.d`); with none, it leaves `/etc/vac.conf` alone. Hiera merges the levels'
#   hashes.
#   Default: `{}`.
# @param machinetypes
#   vac.conf's `[machinetype NAME]` sections: a hash of machinetype names to hashes of
#   their options (`target_share`, `root_image`, `user_data` ...). Hiera merges the levels'
#   hashes deeply.
#   Default: `{}`.
# @param vacquery_key
#   The site's VacQuery key (at least 16 characters; the same on every factory of the
#   space), written to `vacquery_key_file` with mode 0600. Hiera data for it is converted
#   to Sensitive, so it never appears in a report. Also sets `vacquery_key_file` in the
#   rendered vac.conf unless `settings` names one.
# @param vacquery_key_file
#   Where `vacquery_key` is written.
#   Default: `/etc/vac-vacquery.key`.
# @param manage_firewall
#   Add firewalld services `vac-vacquery` (the `vacquery_port` of `settings`, default
#   995/udp) to `firewall_zone` and `vac-guest-api` (the `metadata_port`, default 80/tcp)
#   to `guest_firewall_zone`, and install firewalld.
#   Default: `true`.
# @param firewall_zone
#   The firewalld zone the other factories' VacQuery datagrams arrive in.
#   Default: `public`.
# @param guest_firewall_zone
#   The firewalld zone of the machines' network: libvirt puts its bridges in `libvirt`.
#   Default: `libvirt`.
# @param nagios_nrpe
#   Install the NRPE command `check-vacd` in /etc/nrpe.d (removed when false).
#   Default: `false`.
# @param nrpe_critical_seconds
#   The heartbeat age at which check-vacd reports CRITICAL.
#   Default: `600`.
# @param apel_bdii_hostport
#   Accepted for Vac 03 manifests and ignored, as Vac 03 ignored it; brokers are found
#   through the BDII named in /etc/apel/vac-ssmsend-prod.cfg.
#   Default: `undef`.
# @param apel_cert_path
#   Source of the APEL host certificate; with `apel_key_path`, installs apel-ssm and
#   puts both in /etc/grid-security/vac-apel-{cert,key}.pem.
#   Default: `undef`.
# @param apel_key_path
#   Source of the APEL host key (installed mode 0600).
#   Default: `undef`.
# @param local_squid
#   Run a Squid for cvmfs on this factory, configured by `vac squid-conf`.
#   Default: `false`.
# @param manage_ksm
#   Run ksm and ksmtuned with Vac's settings.
#   Default: `true`.
# @param package_ensure
#   The `ensure` of the vac package (`installed`, `latest` or a version).
#   Default: `installed`.
# @param libvirt_monolithic
#   Run the monolithic libvirtd instead of EL9's modular daemons: stop, disable and mask
#   virtqemud and friends (masked, so vacd.service's Wants= on their sockets is void) and
#   keep libvirtd running. Off by default: EL9 runs the modular daemons, and vacd.service
#   orders itself after them.
#   Default: `false`.
class vac (
  String[1] $space,
  Optional[String[1]] $subspace,
  Optional[String[1]] $subspace1,
  Optional[String[1]] $subspace2,
  Optional[String[1]] $subspace3,
  Optional[String[1]] $subspace4,
  Optional[String[1]] $subspace5,
  Optional[String[1]] $subspace6,
  Optional[String[1]] $subspace7,
  Optional[String[1]] $subspace8,
  Optional[String[1]] $subspace9,
  String[1] $etc_path,
  String[1] $machinetypes_path,
  Vac::Options $settings,
  Hash[Pattern[/\A[A-Za-z0-9][A-Za-z0-9._-]*\z/], Vac::Options] $machinetypes,
  Pattern[/\A\/[^\s]+\z/] $vacquery_key_file,
  Boolean $manage_firewall,
  String[1] $firewall_zone,
  String[1] $guest_firewall_zone,
  Boolean $nagios_nrpe,
  Integer[60] $nrpe_critical_seconds,
  Optional[String[1]] $apel_bdii_hostport,
  Optional[String[1]] $apel_cert_path,
  Optional[String[1]] $apel_key_path,
  Boolean $local_squid,
  Boolean $manage_ksm,
  String[1] $package_ensure,
  Boolean $libvirt_monolithic,
  # Last, as the one default given here and not in data/common.yaml: convert_to would
  # make a null there Sensitive(undef).
  Optional[Sensitive[String[16]]] $vacquery_key = undef,
) {
  if $apel_bdii_hostport =~ NotUndef {
    warning('vac: apel_bdii_hostport is ignored; set the BDII in /etc/apel/vac-ssmsend-prod.cfg')
  }
  if ($apel_cert_path =~ NotUndef) != ($apel_key_path =~ NotUndef) {
    fail('vac: apel_cert_path and apel_key_path must be given together')
  }

  # Sensitive[String[16]] does not check the wrapped length; vacquery/auth.py wants 16 bytes.
  if $vacquery_key =~ NotUndef and $vacquery_key.unwrap.strip.length < 16 {
    fail('vac: vacquery_key must have at least 16 characters, as VacQuery keys do')
  }

  # Shared by vac::config and vac::service.
  $manages_vac_conf = !$settings.empty or !$machinetypes.empty or $vacquery_key =~ NotUndef
  $vacquery_port = Integer($settings.dig('vacquery_port').lest || { 995 })
  $metadata_port = Integer($settings.dig('metadata_port').lest || { 80 })

  contain vac::install
  contain vac::config
  contain vac::service

  # vacd is reloaded by the files it reads, not by every file of vac::config.
  Class['vac::install'] -> Class['vac::config'] -> Class['vac::service']
}
