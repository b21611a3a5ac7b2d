require 'spec_helper'

describe 'vac::service' do
  let(:facts) { FACTORY_FACTS }

  context 'declared by class vac with the defaults' do
    let(:pre_condition) { 'include vac' }

    it { is_expected.to compile.with_all_deps }

    it 'keeps EL9\'s socket-activated modular libvirt daemons' do
      is_expected.to contain_service('virtqemud.socket').with(ensure: 'running', enable: true)
      is_expected.to contain_service('virtnetworkd.socket').with(ensure: 'running', enable: true)
      is_expected.not_to contain_service('libvirtd')
    end

    it 'reloads vacd after the trees change, but not on files it does not read' do
      is_expected.to contain_service('vacd')
        .with_restart('/usr/bin/systemctl reload vacd.service')
        .that_subscribes_to(['File[/etc/vac.d]', 'File[/var/lib/vac/machinetypes]'])
      is_expected.not_to contain_service('vacd').that_subscribes_to('File[/etc/ksmtuned.conf]')
      is_expected.not_to contain_service('vacd').that_subscribes_to('File[/etc/vac.conf]')
    end

    it 'loads new firewalld service files, adds them to their zones, then applies them' do
      is_expected.to contain_exec('vac-firewalld-load-services').with(refreshonly: true)
        .that_subscribes_to(['File[/etc/firewalld/services/vac-vacquery.xml]',
                             'File[/etc/firewalld/services/vac-guest-api.xml]'])
      is_expected.to contain_exec('vac-firewalld-vac-vacquery')
        .with_command('firewall-cmd --permanent --zone=public --add-service=vac-vacquery || ' \
                      'firewall-offline-cmd --zone=public --add-service=vac-vacquery')
        .with_unless(/--query-service=vac-vacquery/)
        .that_requires('Exec[vac-firewalld-load-services]')
        .that_notifies('Exec[vac-firewalld-apply]')
      is_expected.to contain_exec('vac-firewalld-vac-guest-api')
        .with_command(/--zone=libvirt --add-service=vac-guest-api/)
      is_expected.to contain_exec('vac-firewalld-apply').with(refreshonly: true)
        .with_command(/firewall-cmd --reload/)
    end
  end

  context 'declared by class vac with other zones' do
    let(:pre_condition) { "class { 'vac': firewall_zone => 'internal', guest_firewall_zone => 'trusted' }" }

    it { is_expected.to contain_exec('vac-firewalld-vac-vacquery').with_command(/--zone=internal --add-service=vac-vacquery/) }
    it { is_expected.to contain_exec('vac-firewalld-vac-guest-api').with_command(/--zone=trusted --add-service=vac-guest-api/) }
  end

  context 'declared by class vac without firewall management' do
    let(:pre_condition) { "class { 'vac': manage_firewall => false }" }

    it { is_expected.to compile.with_all_deps }
    it { is_expected.not_to contain_exec('vac-firewalld-apply') }
    it { is_expected.not_to contain_exec('vac-firewalld-vac-vacquery') }
  end

  context 'declared by class vac with the monolithic libvirtd' do
    let(:pre_condition) { "class { 'vac': libvirt_monolithic => true }" }

    it { is_expected.to compile.with_all_deps }
    it { is_expected.to contain_exec('vac-libvirt-monolithic').that_comes_before('Service[libvirtd]') }
    it { is_expected.to contain_service('vacd').that_requires('Service[libvirtd]') }
    it { is_expected.not_to contain_service('virtnetworkd.socket') }
  end

  context 'declared on its own' do
    it { is_expected.to compile.and_raise_error(/vac::service is private: declare class vac/) }
  end
end
