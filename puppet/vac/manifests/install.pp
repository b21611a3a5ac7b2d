# @summary The packages of a vac factory: vac and, as class vac asks, firewalld, apel-ssm, squid.
#
# @api private
class vac::install {
  # Declared by class vac only, which holds the parameters (stdlib's assert_private, without stdlib).
  if $caller_module_name != $module_name {
    fail('vac::install is private: declare class vac')
  }

  package { 'vac':
    ensure => $vac::package_ensure,
  }

  if $vac::manage_firewall {
    package { 'firewalld':
      ensure => installed,
    }
  }

  if $vac::apel_cert_path =~ NotUndef and $vac::apel_key_path =~ NotUndef {
    package { 'apel-ssm':
      ensure => installed,
    }
  }

  if $vac::local_squid {
    package { 'squid':
      ensure => installed,
    }
  }
}
