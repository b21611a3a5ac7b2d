# @summary The services of a vac factory: libvirt, vacd, KSM, Squid, and sysctl and firewalld changes.
#
# libvirt is EL9's modular daemons or, with `libvirt_monolithic`, libvirtd. The sysctl
# and firewalld changes are the ones class vac::config's files ask for.
#
# @api private
class vac::service {
  # Declared by class vac only, which holds the parameters (stdlib's assert_private, without stdlib).
  if $caller_module_name != $module_name {
    fail('vac::service is private: declare class vac')
  }

  exec { 'vac-sysctl':
    command     => '/usr/sbin/sysctl -p /etc/sysctl.d/90-vac.conf',
    refreshonly => true,
    subscribe   => File['/etc/sysctl.d/90-vac.conf'],
  }
  exec { 'vac-vm-overcommit-memory':
    command => '/usr/sbin/sysctl -w vm.overcommit_memory=1',
    unless  => '/usr/bin/grep -qx 1 /proc/sys/vm/overcommit_memory',
  }

  if $vac::libvirt_monolithic {
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
      before   => Service['libvirtd'],
    }
    service { 'libvirtd':
      ensure => running,
      enable => true,
    }
    $libvirt_services = [Service['libvirtd']]
  } else {
    # EL9's default: the modular daemons start on their sockets' first connection.
    service { ['virtqemud.socket', 'virtnetworkd.socket']:
      ensure => running,
      enable => true,
    }
    $libvirt_services = [Service['virtqemud.socket'], Service['virtnetworkd.socket']]
  }

  if $vac::manage_firewall {
    # A new or changed service file is known to a running firewalld only after a reload;
    # then the services are added to the zones (permanently), then loaded again. Without a
    # running firewalld, firewall-offline-cmd edits the permanent configuration.
    $firewalld_reload = 'if firewall-cmd --state >/dev/null 2>&1; then firewall-cmd --reload; fi'
    exec { 'vac-firewalld-load-services':
      command     => $firewalld_reload,
      path        => ['/usr/bin', '/bin'],
      provider    => shell,
      refreshonly => true,
      subscribe   => [File['/etc/firewalld/services/vac-vacquery.xml'], File['/etc/firewalld/services/vac-guest-api.xml']],
    }
    $zone_services = {
      'vac-vacquery'  => $vac::firewall_zone,
      'vac-guest-api' => $vac::guest_firewall_zone,
    }
    $zone_services.each |$firewalld_service, $zone| {
      $arguments = "--zone=${zone} --add-service=${firewalld_service}"
      $query = "--zone=${zone} --query-service=${firewalld_service}"
      exec { "vac-firewalld-${firewalld_service}":
        command  => "firewall-cmd --permanent ${arguments} || firewall-offline-cmd ${arguments}",
        unless   => "firewall-cmd --permanent ${query} || firewall-offline-cmd ${query}",
        path     => ['/usr/bin', '/bin'],
        provider => shell,
        require  => Exec['vac-firewalld-load-services'],
        notify   => Exec['vac-firewalld-apply'],
      }
    }
    exec { 'vac-firewalld-apply':
      command     => $firewalld_reload,
      path        => ['/usr/bin', '/bin'],
      provider    => shell,
      refreshonly => true,
    }
  }

  # A refresh is a reload: restarting vacd would not stop machines, but there is no
  # need for it, and a reload re-reads the configuration at once.
  $vac_conf = $vac::manages_vac_conf ? {
    true    => [File['/etc/vac.conf']],
    default => [],
  }
  service { 'vacd':
    ensure    => running,
    enable    => true,
    restart   => '/usr/bin/systemctl reload vacd.service',
    require   => [Exec['vac-vm-overcommit-memory'], Exec['vac-sysctl']] + $libvirt_services,
    subscribe => [File['/etc/vac.d'], File['/var/lib/vac/machinetypes']] + $vac_conf,
  }

  if $vac::manage_ksm {
    service { 'ksm':
      ensure => running,
      enable => true,
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

  if $vac::local_squid {
    service { 'squid':
      ensure => running,
      enable => true,
    }
  }
}
