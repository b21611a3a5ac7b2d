require 'spec_helper'

describe 'vac' do
  let(:facts) { FACTORY_FACTS }

  context 'with the default parameters' do
    it { is_expected.to compile.with_all_deps }
    it { is_expected.to contain_package('vac').with_ensure('installed') }

    it 'contains vac::install, then vac::config, then vac::service' do
      is_expected.to contain_class('vac::install').that_comes_before('Class[vac::config]')
      is_expected.to contain_class('vac::config').that_comes_before('Class[vac::service]')
      is_expected.to contain_class('vac::service')
    end

    it 'makes the package come before the files, and the files before the services' do
      is_expected.to contain_package('vac').that_comes_before('File[/etc/vac.d]')
      is_expected.to contain_file('/etc/vac.d').that_comes_before('Service[vacd]')
      is_expected.to contain_package('vac').that_comes_before('Service[virtqemud.socket]')
    end

    it 'builds /etc/vac.d from the factory, space and site directories, purging the rest' do
      is_expected.to contain_file('/etc/vac.d').with(
        ensure: 'directory',
        recurse: true,
        purge: true,
        force: true,
        sourceselect: 'all',
        show_diff: false,
        source: [
          'puppet:///modules/vac/vac.d/factory1.example.org',
          'puppet:///modules/vac/vac.d/vac01.example.org',
          'puppet:///modules/vac/vac.d/site',
        ],
      )
    end

    it 'builds /var/lib/vac/machinetypes the same way from machinetypes_path' do
      is_expected.to contain_file('/var/lib/vac/machinetypes').with(
        recurse: true,
        purge: true,
        sourceselect: 'all',
        source: [
          'puppet:///modules/vac/machinetypes/factory1.example.org',
          'puppet:///modules/vac/machinetypes/vac01.example.org',
          'puppet:///modules/vac/machinetypes/site',
        ],
      )
    end

    it 'leaves /etc/vac.conf to local overrides' do
      is_expected.not_to contain_file('/etc/vac.conf')
    end

    it 'keeps EL9\'s modular libvirt daemons and never switches to the monolithic libvirtd' do
      is_expected.to contain_service('virtqemud.socket').with(ensure: 'running', enable: true)
      is_expected.to contain_service('virtnetworkd.socket').with(ensure: 'running', enable: true)
      is_expected.not_to contain_service('libvirtd')
      is_expected.not_to contain_exec('vac-libvirt-monolithic')
    end

    it 'reloads vacd, never restarts it, when a configuration tree changes' do
      is_expected.to contain_service('vacd').with(
        ensure: 'running',
        enable: true,
        restart: '/usr/bin/systemctl reload vacd.service',
      ).that_subscribes_to(['File[/etc/vac.d]', 'File[/var/lib/vac/machinetypes]'])
        .that_requires(['Package[vac]', 'Service[virtqemud.socket]', 'Service[virtnetworkd.socket]'])
    end

    it 'sets vm.overcommit_memory to 1 now and at boot' do
      is_expected.to contain_file('/etc/sysctl.d/90-vac.conf').with_content(/^vm\.overcommit_memory = 1$/)
      is_expected.to contain_exec('vac-vm-overcommit-memory').with_command('/usr/sbin/sysctl -w vm.overcommit_memory=1')
    end

    it 'allows the 16 MiB VacQuery socket buffers vacd asks for, applied when the file changes' do
      is_expected.to contain_file('/etc/sysctl.d/90-vac.conf')
        .with_content(/^net\.core\.rmem_max = 16777216$/)
        .with_content(/^net\.core\.wmem_max = 16777216$/)
      is_expected.to contain_exec('vac-sysctl').with(
        command: '/usr/sbin/sysctl -p /etc/sysctl.d/90-vac.conf',
        refreshonly: true,
      ).that_subscribes_to('File[/etc/sysctl.d/90-vac.conf]')
      is_expected.to contain_service('vacd').that_requires('Exec[vac-sysctl]')
    end

    it 'creates the root key pair that root_public_key names by default' do
      is_expected.to contain_exec('vac-root-ssh-key').with_creates('/root/.ssh/id_rsa.pub')
    end

    it 'runs ksm and ksmtuned with Vac 03 tuning' do
      is_expected.to contain_service('ksm').with_ensure('running')
      is_expected.to contain_service('ksmtuned').with_ensure('running').that_subscribes_to('File[/etc/ksmtuned.conf]')
      is_expected.to contain_file('/etc/ksmtuned.conf')
        .with_content(%r{^LOGFILE=/var/log/ksmtuned$})
        .with_content(/^DEBUG=1$/)
        .with_content(/^KSM_THRES_COEF=66$/)
      is_expected.to contain_exec('vac-ksm-merge-across-nodes').with_unless(%r{merge_across_nodes})
    end

    it 'has no NRPE command' do
      is_expected.to contain_file('/etc/nrpe.d/nagios-plugins-check-vacd.cfg').with_ensure('absent')
    end

    it 'installs neither APEL nor Squid' do
      is_expected.not_to contain_package('apel-ssm')
      is_expected.not_to contain_file('/etc/grid-security/vac-apel-key.pem')
      is_expected.not_to contain_package('squid')
      is_expected.not_to contain_exec('vac-squid-conf')
    end
  end

  context 'with a space and subspaces' do
    let(:params) do
      {
        space: 'vac02.example.org',
        subspace: 'gpu',
        subspace2: 'bigmem',
        etc_path: 'modules/site_vac/vac.d',
      }
    end

    it 'puts the subspace directories between the factory and the space, in parameter order' do
      is_expected.to contain_file('/etc/vac.d').with_source([
                                                              'puppet:///modules/site_vac/vac.d/factory1.example.org',
                                                              'puppet:///modules/site_vac/vac.d/vac02.example.org:gpu',
                                                              'puppet:///modules/site_vac/vac.d/vac02.example.org:bigmem',
                                                              'puppet:///modules/site_vac/vac.d/vac02.example.org',
                                                              'puppet:///modules/site_vac/vac.d/site',
                                                            ])
    end
  end

  context 'with nagios_nrpe' do
    let(:params) { { nagios_nrpe: true, nrpe_critical_seconds: 900 } }

    it 'installs the NRPE command running check-vacd' do
      is_expected.to contain_file('/etc/nrpe.d/nagios-plugins-check-vacd.cfg')
        .with_ensure('file')
        .with_content(%r{^command\[check-vacd\]=/usr/sbin/check-vacd 900$})
    end
  end

  context 'with an APEL certificate and key' do
    let(:params) do
      {
        apel_cert_path: 'puppet:///modules/site_vac/apel/hostcert.pem',
        apel_key_path: 'puppet:///modules/site_vac/apel/hostkey.pem',
      }
    end

    it { is_expected.to compile.with_all_deps }
    it { is_expected.to contain_package('apel-ssm') }

    it 'installs the certificate readable and the key for root only' do
      is_expected.to contain_file('/etc/grid-security/vac-apel-cert.pem').with(
        mode: '0644', source: 'puppet:///modules/site_vac/apel/hostcert.pem',
      )
      is_expected.to contain_file('/etc/grid-security/vac-apel-key.pem').with(
        mode: '0600', source: 'puppet:///modules/site_vac/apel/hostkey.pem', show_diff: false,
      )
    end
  end

  context 'with only an APEL certificate' do
    let(:params) { { apel_cert_path: 'puppet:///modules/site_vac/apel/hostcert.pem' } }

    it { is_expected.to compile.and_raise_error(/apel_cert_path and apel_key_path must be given together/) }
  end

  context 'with local_squid' do
    let(:params) { { local_squid: true } }

    it { is_expected.to compile.with_all_deps }

    it 'generates squid.conf with vac squid-conf and refreshes Squid only on a change' do
      is_expected.to contain_package('squid')
      is_expected.to contain_exec('vac-squid-conf')
        .with_command('vac squid-conf /etc/squid/squid.conf.vac /etc/squid/squid.conf')
        .with_unless(/cmp -s .* \/etc\/squid\/squid\.conf$/)
        .that_notifies('Service[squid]')
      is_expected.to contain_service('squid').with(ensure: 'running', enable: true)
    end
  end

  context 'with libvirt_monolithic true' do
    let(:params) { { libvirt_monolithic: true } }

    it { is_expected.to compile.with_all_deps }
    it { is_expected.to contain_service('libvirtd').with(ensure: 'running', enable: true) }
    it { is_expected.not_to contain_service('virtqemud.socket') }

    it 'disables and masks the modular libvirt daemons before starting libvirtd' do
      is_expected.to contain_exec('vac-libvirt-monolithic')
        .with_command(/^systemctl disable --now virtqemud\.service virtqemud\.socket .*virtinterfaced-admin\.socket .*; systemctl mask virtqemud\.service /)
        .that_comes_before('Service[libvirtd]')
    end

    it { is_expected.to contain_service('vacd').that_requires('Service[libvirtd]') }
  end

  context 'without KSM management' do
    let(:params) { { manage_ksm: false } }

    it { is_expected.not_to contain_service('ksm') }
    it { is_expected.not_to contain_file('/etc/ksmtuned.conf') }
  end

  context 'with a subspace that is not a string' do
    let(:params) { { subspace: 42 } }

    it { is_expected.to compile.and_raise_error(/subspace/) }
  end
end
