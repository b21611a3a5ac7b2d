require 'spec_helper'

# Issue 11 item 6: every file the module writes belongs to root with a mode that keeps
# secrets (VacQuery and APEL keys, x509key.pem, user_data_option_* tokens in vac.conf and
# /etc/vac.d) from every other user, whatever mode the file has on the file server.
# tests/packaging/test_puppet.py applies the same catalogue under a scratch root and reads
# the modes back from disk.
describe 'vac' do
  let(:facts) { FACTORY_FACTS }

  # Every file resource of the catalogue with every optional part on, and its mode.
  expected_modes = {
    # Configuration read only by root (vacd, vac): 0640 files, 0750 directories.
    '/etc/vac.d' => '0640',
    # QEMU must pass through to the images in files/; files are root's alone.
    '/var/lib/vac/machinetypes' => 'u=rw,go=,a+X',
    # Holds vacquery_key_file and may hold user_data_option_* tokens.
    '/etc/vac.conf' => '0600',
    '/etc/vac-vacquery.key' => '0600',
    '/etc/grid-security/vac-apel-key.pem' => '0600',
    # A certificate is public.
    '/etc/grid-security/vac-apel-cert.pem' => '0644',
    '/etc/sysctl.d/90-vac.conf' => '0644',
    '/etc/ksmtuned.conf' => '0644',
    '/etc/logrotate.d/ksmtuned' => '0644',
    '/etc/nrpe.d/nagios-plugins-check-vacd.cfg' => '0644',
    '/etc/firewalld/services/vac-vacquery.xml' => '0644',
    '/etc/firewalld/services/vac-guest-api.xml' => '0644',
  }.freeze

  context 'with every part that writes files' do
    let(:params) do
      {
        settings: { 'vac_space' => 'vac01.example.org', 'user_data_option_token' => 'a site token' },
        machinetypes: { 'lhcb' => { 'target_share' => 1, 'user_data_proxy' => true } },
        vacquery_key: sensitive('0123456789abcdef0123'),
        apel_cert_path: 'puppet:///modules/site_vac/apel/hostcert.pem',
        apel_key_path: 'puppet:///modules/site_vac/apel/hostkey.pem',
        nagios_nrpe: true,
      }
    end

    it { is_expected.to compile.with_all_deps }

    expected_modes.each do |path, mode|
      it "writes #{path} owned by root:root with mode #{mode}" do
        is_expected.to contain_file(path).with(owner: 'root', group: 'root', mode: mode)
      end
    end

    it 'writes no file whose mode is not pinned here' do
      written = catalogue.resources.select { |resource| resource.type == 'File' }.map(&:title)
      expect(written).to match_array(expected_modes.keys)
    end

    it 'never shows a secret file in a report diff' do
      ['/etc/vac.d', '/var/lib/vac/machinetypes', '/etc/vac.conf', '/etc/vac-vacquery.key',
       '/etc/grid-security/vac-apel-key.pem'].each do |path|
        expect(catalogue.resource('File', path)[:show_diff]).to be(false), path
      end
    end
  end
end
