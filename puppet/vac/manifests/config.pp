# @summary The files of a vac factory: configuration trees, vac.conf, VacQuery key, sysctl, firewalld.
#
# The /etc/vac.d and machinetypes trees, the vac.conf rendered from Hiera, the VacQuery
# key, the sysctl drop-in, KSM tuning, NRPE, APEL and the firewalld service definitions.
#
# Nothing here restarts or reloads a service itself: class vac::service subscribes vacd to
# the configuration files and applies the sysctl and firewalld changes.
#
# @api private
class vac::config {
  # Declared by class vac only, which holds the parameters (stdlib's assert_private, without stdlib).
  if $caller_module_name != $module_name {
    fail('vac::config is private: declare class vac')
  }

  $subspaces = [
    $vac::subspace, $vac::subspace1, $vac::subspace2, $vac::subspace3, $vac::subspace4,
    $vac::subspace5, $vac::subspace6, $vac::subspace7, $vac::subspace8, $vac::subspace9,
  ].filter |$name| { $name =~ NotUndef }
  $fqdn = $facts['networking']['fqdn']

  # Both trees may hold tokens (user_data_option_*) and X.509 keys: no diffs in reports, and
  # modes that keep them from every user but root, whatever mode a file has on the file
  # server (Puppet ignores the source's permissions, and git keeps none but the x bit).
  # Files that other resources manage inside them are not purged.
  #
  # /etc/vac.d is read by vacd and vac, as root, only: files 0640 root:root; directories
  # 0750 (Puppet adds the search bit wherever a numeric mode has the read bit).
  file { '/etc/vac.d':
    ensure       => directory,
    recurse      => true,
    purge        => true,
    force        => true,
    sourceselect => 'all',
    source       => vac::tree_sources($vac::etc_path, $fqdn, $vac::space, $subspaces),
    owner        => 'root',
    group        => 'root',
    mode         => '0640',
    show_diff    => false,
  }

  # The machinetypes tree holds x509key.pem (user_data_proxy) and user_data files beside the
  # images of files/, which QEMU opens as its own user: libvirt (dynamic_ownership) chowns an
  # image to that user while a machine runs, but never the directories above it. Files are
  # 0600 root:root, directories 0711, which
  # QEMU can pass through and no other user can list.
  file { '/var/lib/vac/machinetypes':
    ensure       => directory,
    recurse      => true,
    purge        => true,
    force        => true,
    sourceselect => 'all',
    source       => vac::tree_sources($vac::machinetypes_path, $fqdn, $vac::space, $subspaces),
    owner        => 'root',
    group        => 'root',
    mode         => 'u=rw,go=,a+X',
    show_diff    => false,
  }

  # The site's VacQuery key (vac.conf(5) vacquery_key_file): root only, never in a report.
  if $vac::vacquery_key =~ NotUndef {
    file { $vac::vacquery_key_file:
      ensure    => file,
      owner     => 'root',
      group     => 'root',
      mode      => '0600',
      content   => Sensitive("${vac::vacquery_key.unwrap}\n"),
      show_diff => false,
    }
    $key_settings = { 'vacquery_key_file' => $vac::vacquery_key_file }
  } else {
    $key_settings = {}
  }

  # /etc/vac.conf from Hiera, only when there is something to put in it: otherwise it stays
  # free for local overrides. The settings' own vacquery_key_file wins over the key's path.
  $settings = $key_settings + $vac::settings
  if $vac::manages_vac_conf {
    file { '/etc/vac.conf':
      ensure       => file,
      owner        => 'root',
      group        => 'root',
      mode         => '0600',
      content      => epp('vac/vac.conf.epp', { 'settings' => $settings, 'machinetypes' => $vac::machinetypes }),
      show_diff    => false,
      # The whole configuration (/etc/vac.d, this file, /run/vac.conf) with the new text in
      # place of the old, and what start-up needs: a file with an error is not installed.
      validate_cmd => '/usr/sbin/vacd --check-config --config % >/dev/null',
      require      => [File['/etc/vac.d'], File['/var/lib/vac/machinetypes']],
    }
    if $vac::vacquery_key =~ NotUndef {
      File[$vac::vacquery_key_file] -> File['/etc/vac.conf']
    }
  }

  # Virtual machines get all the memory their processors allow (§10.4), and VacQuery
  # sockets the 16 MiB buffers vacd asks for (§3.1).
  file { '/etc/sysctl.d/90-vac.conf':
    ensure  => file,
    owner   => 'root',
    group   => 'root',
    mode    => '0644',
    content => epp('vac/sysctl-vac.conf.epp'),
  }

  # vac.conf's root_public_key defaults to /root/.ssh/id_rsa.pub, offered to machines
  # through the metadata service.
  exec { 'vac-root-ssh-key':
    command  => "mkdir -p -m 0700 /root/.ssh && ssh-keygen -q -t rsa -b 4096 -N '' -f /root/.ssh/id_rsa",
    path     => ['/usr/bin', '/bin'],
    creates  => '/root/.ssh/id_rsa.pub',
    provider => shell,
  }

  if $vac::manage_ksm {
    file { '/etc/ksmtuned.conf':
      ensure  => file,
      owner   => 'root',
      group   => 'root',
      mode    => '0644',
      content => epp('vac/ksmtuned.conf.epp'),
    }
    file { '/etc/logrotate.d/ksmtuned':
      ensure  => file,
      owner   => 'root',
      group   => 'root',
      mode    => '0644',
      content => epp('vac/ksmtuned.logrotate.epp'),
    }
  }

  $nrpe_ensure = $vac::nagios_nrpe ? {
    true    => 'file',
    default => 'absent',
  }
  file { '/etc/nrpe.d/nagios-plugins-check-vacd.cfg':
    ensure  => $nrpe_ensure,
    owner   => 'root',
    group   => 'root',
    mode    => '0644',
    content => epp('vac/nrpe-check-vacd.cfg.epp', { 'critical_seconds' => $vac::nrpe_critical_seconds }),
  }

  if $vac::apel_cert_path =~ NotUndef and $vac::apel_key_path =~ NotUndef {
    file { '/etc/grid-security/vac-apel-cert.pem':
      ensure => file,
      owner  => 'root',
      group  => 'root',
      mode   => '0644',
      source => $vac::apel_cert_path,
    }
    file { '/etc/grid-security/vac-apel-key.pem':
      ensure    => file,
      owner     => 'root',
      group     => 'root',
      mode      => '0600',
      source    => $vac::apel_key_path,
      show_diff => false,
    }
  }

  # firewalld services for the ports vacd listens on, at the ports the settings give:
  # VacQuery from the other factories, the metadata and MJF servers from the machines.
  if $vac::manage_firewall {
    file { '/etc/firewalld/services/vac-vacquery.xml':
      ensure  => file,
      owner   => 'root',
      group   => 'root',
      mode    => '0644',
      content => epp('vac/firewalld-service.xml.epp', {
          'short'       => 'vac VacQuery',
          'description' => 'VacQuery: the factories of a vac space ask each other what they run.',
          'port'        => $vac::vacquery_port,
          'protocol'    => 'udp',
      }),
    }
    file { '/etc/firewalld/services/vac-guest-api.xml':
      ensure  => file,
      owner   => 'root',
      group   => 'root',
      mode    => '0644',
      content => epp('vac/firewalld-service.xml.epp', {
          'short'       => 'vac guest API',
          'description' => 'The metadata and Machine/Job Features servers vacd runs for its virtual machines.',
          'port'        => $vac::metadata_port,
          'protocol'    => 'tcp',
      }),
    }
  }

  if $vac::local_squid {
    # `vac squid-conf` rewrites its output only when the content changes. It writes a
    # scratch copy first so that Puppet runs it, and refreshes Squid, only on a change.
    $squid_expected = '/var/lib/vac/tmp/squid.conf.expected'
    exec { 'vac-squid-conf':
      command  => 'vac squid-conf /etc/squid/squid.conf.vac /etc/squid/squid.conf',
      unless   => "vac squid-conf /etc/squid/squid.conf.vac ${squid_expected} && cmp -s ${squid_expected} /etc/squid/squid.conf",
      path     => ['/usr/sbin', '/usr/bin', '/bin'],
      provider => shell,
      require  => File['/etc/vac.d'],
      notify   => Service['squid'],
    }
  }
}
