require 'spec_helper'

describe 'vac::install' do
  let(:facts) { FACTORY_FACTS }

  context 'declared by class vac with the defaults' do
    let(:pre_condition) { 'include vac' }

    it { is_expected.to compile.with_all_deps }
    it { is_expected.to contain_package('vac').with_ensure('installed') }
    it { is_expected.to contain_package('firewalld').with_ensure('installed') }
    it { is_expected.not_to contain_package('apel-ssm') }
    it { is_expected.not_to contain_package('squid') }
  end

  context 'declared by class vac with a pinned version, APEL, Squid and no firewall' do
    let(:pre_condition) do
      <<-PUPPET
        class { 'vac':
          package_ensure  => '4.0.0-1.el9',
          apel_cert_path  => 'puppet:///modules/site_vac/apel/hostcert.pem',
          apel_key_path   => 'puppet:///modules/site_vac/apel/hostkey.pem',
          local_squid     => true,
          manage_firewall => false,
        }
      PUPPET
    end

    it { is_expected.to contain_package('vac').with_ensure('4.0.0-1.el9') }
    it { is_expected.to contain_package('apel-ssm') }
    it { is_expected.to contain_package('squid') }
    it { is_expected.not_to contain_package('firewalld') }
  end

  context 'declared on its own' do
    it { is_expected.to compile.and_raise_error(/vac::install is private: declare class vac/) }
  end
end
