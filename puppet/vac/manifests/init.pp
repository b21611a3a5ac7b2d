# @summary Installs vac on a factory and keeps its configuration, vacd and the host tuned.
#
# Keeps Vac 03's Puppet class (behaviour reference §10.4), for EL9 with systemd:
#
# * `/etc/vac.d` and `/var/lib/vac/machinetypes` are recursive, purged trees built from
#   several file-server directories, most specific first: `<path>/<fqdn>`, then
#   `<path>/<space>:<subspace>` for `subspace` and `subspace1` to `subspace9` in that
#   order, then `<path>/<space>`, then `<path>/site`. The first directory holding a file
#   of a given name wins, so one factory or one subspace can override a file of the
#   space or of the site. `/etc/vac.conf` is left to local overrides.
# * A change in either tree reloads vacd (SIGHUP), never restarts it; vacd also re-reads
#   its configuration on every pass.
# * Package `vac`; service `vacd` after EL9's socket-activated modular libvirt daemons
#   (`virtqemud.socket`, `virtnetworkd.socket`, as EL9 installs them), or after `libvirtd`
#   with `libvirt_monolithic`; `ksm` and `ksmtuned` with Vac's KSM tuning;
#   `vm.overcommit_memory = 1`, VacQuery's 16 MiB socket buffer maxima
#   (`net.core.rmem_max`, `wmem_max`), a root SSH key pair for `root_public_key`.
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
# @param space
#   The vac space this factory belongs to; must match `vac_space` in vac.conf.
# @param subspace
#   A group of the space's factories that share files; see the source order above.
# @param subspace1
#   A further subspace, after `subspace`; likewise `subspace2` to `subspace9`.
# @param subspace2
#   See `subspace1`.
# @param subspace3
#   See `subspace1`.
# @param subspace4
#   See `subspace1`.
# @param subspace5
#   See `subspace1`.
# @param subspace6
#   See `subspace1`.
# @param subspace7
#   See `subspace1`.
# @param subspace8
#   See `subspace1`.
# @param subspace9
#   See `subspace1`.
# @param etc_path
#   File-server path (after `puppet:///`) of the directories whose files go to /etc/vac.d.
# @param machinetypes_path
#   File-server path of the directories whose files go to /var/lib/vac/machinetypes.
# @param nagios_nrpe
#   Install the NRPE command `check-vacd` in /etc/nrpe.d (removed when false).
# @param nrpe_critical_seconds
#   The heartbeat age at which check-vacd reports CRITICAL.
# @param apel_bdii_hostport
#   Accepted for Vac 03 manifests and ignored, as Vac 03 ignored it; brokers are found
#   through the BDII named in /etc/apel/vac-ssmsend-prod.cfg.
# @param apel_cert_path
#   Source of the APEL host certificate; with `apel_key_path`, installs apel-ssm and
#   puts both in /etc/grid-security/vac-apel-{cert,key}.pem.
# @param apel_key_path
#   Source of the APEL host key (installed mode 0600).
# @param local_squid
#   Run a Squid for cvmfs on this factory, configured by `vac squid-conf`.
# @param manage_ksm
#   Run ksm and ksmtuned with Vac's settings.
# @param package_ensure
#   The `ensure` of the vac package (`installed`, `latest` or a version).
# @param libvirt_monolithic
#   Run the monolithic libvirtd instead of EL9's modular daemons: stop, disable and mask
#   virtqemud and friends (masked, so vacd.service's Wants= on their sockets is void) and
#   keep libvirtd running. Off by default: EL9 runs the modular daemons, and vacd.service
#   orders itself after them.
class vac (
  String[1] $space = "vac01.${facts['networking']['domain']}",
  Optional[String[1]] $subspace = undef,
  Optional[String[1]] $subspace1 = undef,
  Optional[String[1]] $subspace2 = undef,
  Optional[String[1]] $subspace3 = undef,
  Optional[String[1]] $subspace4 = undef,
  Optional[String[1]] $subspace5 = undef,
  Optional[String[1]] $subspace6 = undef,
  Optional[String[1]] $subspace7 = undef,
  Optional[String[1]] $subspace8 = undef,
  Optional[String[1]] $subspace9 = undef,
  String[1] $etc_path = 'modules/vac/vac.d',
  String[1] $machinetypes_path = 'modules/vac/machinetypes',
  Boolean $nagios_nrpe = false,
  Integer[60] $nrpe_critical_seconds = 600,
  Optional[String[1]] $apel_bdii_hostport = undef,
  Optional[String[1]] $apel_cert_path = undef,
  Optional[String[1]] $apel_key_path = undef,
  Boolean $local_squid = false,
  Boolean $manage_ksm = true,
  String[1] $package_ensure = 'installed',
  Boolean $libvirt_monolithic = false,
) {
  if $apel_bdii_hostport =~ NotUndef {
    warning('vac: apel_bdii_hostport is ignored; set the BDII in /etc/apel/vac-ssmsend-prod.cfg')
  }

  $subspaces = [
    $subspace, $subspace1, $subspace2, $subspace3, $subspace4,
    $subspace5, $subspace6, $subspace7, $subspace8, $subspace9,
  ].filter |$name| { $name =~ NotUndef }
  $fqdn = $facts['networking']['fqdn']

  package { 'vac':
    ensure => $package_ensure,
  }

  # Both trees may hold tokens (user_data_option_*) and X.509 keys: no diffs in reports.
  file { '/etc/vac.d':
    ensure       => directory,
    recurse      => true,
    purge        => true,
    force        => true,
    sourceselect => 'all',
    source       => vac::tree_sources($etc_path, $fqdn, $space, $subspaces),
    owner        => 'root',
    group        => 'root',
    mode         => '0644',
    show_diff    => false,
    require      => Package['vac'],
  }

  file { '/var/lib/vac/machinetypes':
    ensure       => directory,
    recurse      => true,
    purge        => true,
    force        => true,
    sourceselect => 'all',
    source       => vac::tree_sources($machinetypes_path, $fqdn, $space, $subspaces),
    owner        => 'root',
    group        => 'root',
    show_diff    => false,
    require      => Package['vac'],
  }

  # Virtual machines get all the memory their processors allow (§10.4), and VacQuery
  # sockets the 16 MiB buffers vacd asks for (§3.1). Applied at once when the file changes.
  file { '/etc/sysctl.d/90-vac.conf':
    ensure  => file,
    owner   => 'root',
    group   => 'root',
    mode    => '0644',
    content => epp('vac/sysctl-vac.conf.epp'),
  }
  exec { 'vac-sysctl':
    command     => '/usr/sbin/sysctl -p /etc/sysctl.d/90-vac.conf',
    refreshonly => true,
    subscribe   => File['/etc/sysctl.d/90-vac.conf'],
  }
  exec { 'vac-vm-overcommit-memory':
    command => '/usr/sbin/sysctl -w vm.overcommit_memory=1',
    unless  => '/usr/bin/grep -qx 1 /proc/sys/vm/overcommit_memory',
    require => File['/etc/sysctl.d/90-vac.conf'],
  }

  # vac.conf's root_public_key defaults to /root/.ssh/id_rsa.pub, offered to machines
  # through the metadata service.
  exec { 'vac-root-ssh-key':
    command  => "mkdir -p -m 0700 /root/.ssh && ssh-keygen -q -t rsa -b 4096 -N '' -f /root/.ssh/id_rsa",
    path     => ['/usr/bin', '/bin'],
    creates  => '/root/.ssh/id_rsa.pub',
    provider => shell,
  }

  if $libvirt_monolithic {
    # EL9 enables one daemon per libvirt driver; two daemons must not both run QEMU.
    # Masked, not only disabled: vacd.service wants virtqemud.socket and virtnetworkd.socket.
    $modular_units = ['qemu', 'network', 'nodedev', 'nwfilter', 'secret', 'storage', 'interface'].map |$driver| {
      "virt${driver}d.service virt${driver}d.socket virt${driver}d-ro.socket virt${driver}d-admin.socket"
    }.join(' ')
    $switch_to_monolithic = "systemctl disable --now ${modular_units} >/dev/null 2>&1; systemctl mask ${modular_units} >/dev/null 2>&1"
    exec { 'vac-libvirt-monolithic':
      command  => "${switch_to_monolithic}; true",
      unless   => 'test "$(systemctl is-enabled virtqemud.socket 2>/dev/null)" = masked',
      path     => ['/usr/bin', '/bin'],
      provider => shell,
      require  => Package['vac'],
      before   => Service['libvirtd'],
    }
    service { 'libvirtd':
      ensure  => running,
      enable  => true,
      require => Package['vac'],
    }
    $libvirt_services = [Service['libvirtd']]
  } else {
    # EL9's default: the modular daemons start on their sockets' first connection.
    service { ['virtqemud.socket', 'virtnetworkd.socket']:
      ensure  => running,
      enable  => true,
      require => Package['vac'],
    }
    $libvirt_services = [Service['virtqemud.socket'], Service['virtnetworkd.socket']]
  }

  # A refresh is a reload: restarting vacd would not stop machines, but there is no
  # need for it, and a reload re-reads the configuration at once.
  service { 'vacd':
    ensure    => running,
    enable    => true,
    restart   => '/usr/bin/systemctl reload vacd.service',
    require   => [Package['vac'], Exec['vac-vm-overcommit-memory'], Exec['vac-sysctl']] + $libvirt_services,
    subscribe => [File['/etc/vac.d'], File['/var/lib/vac/machinetypes']],
  }

  if $manage_ksm {
    file { '/etc/ksmtuned.conf':
      ensure  => file,
      owner   => 'root',
      group   => 'root',
      mode    => '0644',
      content => epp('vac/ksmtuned.conf.epp'),
      require => Package['vac'],
    }
    file { '/etc/logrotate.d/ksmtuned':
      ensure  => file,
      owner   => 'root',
      group   => 'root',
      mode    => '0644',
      content => epp('vac/ksmtuned.logrotate.epp'),
    }
    service { 'ksm':
      ensure  => running,
      enable  => true,
      require => Package['vac'],
    }
    service { 'ksmtuned':
      ensure    => running,
      enable    => true,
      subscribe => File['/etc/ksmtuned.conf'],
      require   => Service['ksm'],
    }
    # Merge pages only within a NUMA node. The kernel accepts the change only while no
    # pages are merged, hence run=2 (unmerge), the change, then run=1 (§10.4).
    exec { 'vac-ksm-merge-across-nodes':
      command  => 'echo 2 > /sys/kernel/mm/ksm/run && echo 0 > /sys/kernel/mm/ksm/merge_across_nodes && echo 1 > /sys/kernel/mm/ksm/run',
      onlyif   => 'test -w /sys/kernel/mm/ksm/merge_across_nodes',
      unless   => 'grep -qx 0 /sys/kernel/mm/ksm/merge_across_nodes',
      path     => ['/usr/bin', '/bin'],
      provider => shell,
      require  => Service['ksm'],
    }
  }

  $nrpe_ensure = $nagios_nrpe ? {
    true    => 'file',
    default => 'absent',
  }
  file { '/etc/nrpe.d/nagios-plugins-check-vacd.cfg':
    ensure  => $nrpe_ensure,
    owner   => 'root',
    group   => 'root',
    mode    => '0644',
    content => epp('vac/nrpe-check-vacd.cfg.epp', { 'critical_seconds' => $nrpe_critical_seconds }),
  }

  if $apel_cert_path =~ NotUndef and $apel_key_path =~ NotUndef {
    package { 'apel-ssm':
      ensure => installed,
    }
    file { '/etc/grid-security/vac-apel-cert.pem':
      ensure => file,
      owner  => 'root',
      group  => 'root',
      mode   => '0644',
      source => $apel_cert_path,
    }
    file { '/etc/grid-security/vac-apel-key.pem':
      ensure    => file,
      owner     => 'root',
      group     => 'root',
      mode      => '0600',
      source    => $apel_key_path,
      show_diff => false,
    }
  } elsif $apel_cert_path =~ NotUndef or $apel_key_path =~ NotUndef {
    fail('vac: apel_cert_path and apel_key_path must be given together')
  }

  if $local_squid {
    package { 'squid':
      ensure => installed,
    }
    # `vac squid-conf` rewrites its output only when the content changes. It writes a
    # scratch copy first so that Puppet runs it, and refreshes Squid, only on a change.
    $squid_expected = '/var/lib/vac/tmp/squid.conf.expected'
    exec { 'vac-squid-conf':
      command  => 'vac squid-conf /etc/squid/squid.conf.vac /etc/squid/squid.conf',
      unless   => "vac squid-conf /etc/squid/squid.conf.vac ${squid_expected} && cmp -s ${squid_expected} /etc/squid/squid.conf",
      path     => ['/usr/sbin', '/usr/bin', '/bin'],
      provider => shell,
      require  => [Package['vac'], Package['squid'], File['/etc/vac.d']],
      notify   => Service['squid'],
    }
    service { 'squid':
      ensure => running,
      enable => true,
    }
  }
}
