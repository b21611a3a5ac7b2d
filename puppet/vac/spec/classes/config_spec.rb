require 'spec_helper'

describe 'vac::config' do
  let(:facts) { FACTORY_FACTS }

  context 'declared by class vac with the defaults' do
    let(:pre_condition) { 'include vac' }

    it { is_expected.to compile.with_all_deps }

    it 'leaves /etc/vac.conf to local overrides and writes no key' do
      is_expected.not_to contain_file('/etc/vac.conf')
      is_expected.not_to contain_file('/etc/vac-vacquery.key')
    end

    it 'keeps the sysctl drop-in' do
      is_expected.to contain_file('/etc/sysctl.d/90-vac.conf')
        .with_content(/^vm\.overcommit_memory = 1$/)
        .with_content(/^net\.core\.rmem_max = 16777216$/)
    end

    it 'defines firewalld services for VacQuery on 995/udp and the guest API on 80/tcp' do
      is_expected.to contain_file('/etc/firewalld/services/vac-vacquery.xml')
        .with_content(%r{<port protocol="udp" port="995"/>})
        .with_content(%r{<short>vac VacQuery</short>})
      is_expected.to contain_file('/etc/firewalld/services/vac-guest-api.xml')
        .with_content(%r{<port protocol="tcp" port="80"/>})
    end
  end

  context 'declared by class vac with settings, machinetypes and a VacQuery key' do
    let(:pre_condition) do
      <<-PUPPET
        class { 'vac':
          settings     => {
            'vac_space'        => 'vac01.example.org',
            'factories'        => ['factory1.example.org', 'factory2.example.org'],
            'total_processors' => 16,
            'vacquery_port'    => '1995',
            'metadata_port'    => 8080,
            'user_data_proxy'  => true,
          },
          machinetypes => {
            'lhcb'  => { 'target_share' => 2.5, 'root_image' => 'https://lhcb.example.org/cernvm4.iso' },
            'atlas' => { 'target_share' => 1 },
          },
          vacquery_key => Sensitive('0123456789abcdef0123'),
        }
      PUPPET
    end

    it { is_expected.to compile.with_all_deps }

    it 'renders /etc/vac.conf: [settings] then each machinetype, options sorted, lists space-separated' do
      is_expected.to contain_file('/etc/vac.conf').with(
        ensure: 'file', owner: 'root', mode: '0600', show_diff: false,
      )
      content = catalogue.resource('File', '/etc/vac.conf')[:content]
      sections = content.lines.grep(/^\[/).map(&:chomp)
      expect(sections).to eq(['[settings]', '[machinetype atlas]', '[machinetype lhcb]'])
      settings = content[/^\[settings\]\n(.*?)\n\n/m, 1].lines.map(&:chomp)
      expect(settings).to eq([
                               'factories = factory1.example.org factory2.example.org',
                               'metadata_port = 8080',
                               'total_processors = 16',
                               'user_data_proxy = true',
                               'vac_space = vac01.example.org',
                               'vacquery_key_file = /etc/vac-vacquery.key',
                               'vacquery_port = 1995',
                             ])
      expect(content).to match(%r{^\[machinetype lhcb\]\nroot_image = https://lhcb\.example\.org/cernvm4\.iso\ntarget_share = 2\.5\n})
      expect(content).to match(/^\[machinetype atlas\]\ntarget_share = 1\n/)
    end

    it 'checks the new vac.conf with the rest of the configuration before putting it in place' do
      is_expected.to contain_file('/etc/vac.conf')
        .with_validate_cmd('/usr/sbin/vacd --check-config --config % >/dev/null')
        .that_requires(['File[/etc/vac.d]', 'File[/var/lib/vac/machinetypes]', 'File[/etc/vac-vacquery.key]'])
    end

    it 'writes the VacQuery key for root only, as Sensitive content' do
      is_expected.to contain_file('/etc/vac-vacquery.key').with(
        ensure: 'file', owner: 'root', group: 'root', mode: '0600', show_diff: false,
      )
      key_file = catalogue.resource('File', '/etc/vac-vacquery.key')
      expect(key_file.sensitive_parameters).to include(:content)
      expect(key_file[:content]).to eq("0123456789abcdef0123\n")
    end

    it 'opens the ports the settings give' do
      is_expected.to contain_file('/etc/firewalld/services/vac-vacquery.xml').with_content(%r{port="1995"})
      is_expected.to contain_file('/etc/firewalld/services/vac-guest-api.xml').with_content(%r{port="8080"})
    end

    it 'has vacd reload when vac.conf changes' do
      is_expected.to contain_service('vacd').that_subscribes_to('File[/etc/vac.conf]')
    end
  end

  context 'declared by class vac with only a VacQuery key' do
    let(:pre_condition) { "class { 'vac': vacquery_key => Sensitive('0123456789abcdef'), vacquery_key_file => '/etc/vac/site.key' }" }

    it 'writes vac.conf with just the key file, so the key is used' do
      is_expected.to contain_file('/etc/vac/site.key').with_mode('0600')
      is_expected.to contain_file('/etc/vac.conf').with_content(%r{\A(#[^\n]*\n)+\n\[settings\]\nvacquery_key_file = /etc/vac/site\.key\n\z})
    end
  end

  context 'declared by class vac with a key and a vacquery_key_file setting of its own' do
    let(:pre_condition) do
      "class { 'vac': vacquery_key => Sensitive('0123456789abcdef'), " \
      "settings => { 'vacquery_key_file' => '/etc/vac-vacquery.key /etc/old.key' } }"
    end

    it 'keeps the setting (a key change in progress)' do
      is_expected.to contain_file('/etc/vac.conf').with_content(%r{^vacquery_key_file = /etc/vac-vacquery\.key /etc/old\.key$})
    end
  end

  context 'declared by class vac with a setting value that spans lines' do
    let(:pre_condition) { "class { 'vac': settings => { 'vac_space' => \"vac01.example.org\\n[machinetype evil]\" } }" }

    it { is_expected.to compile.and_raise_error(/settings/) }
  end

  context 'declared by class vac with a VacQuery key too short to be one' do
    let(:pre_condition) { "class { 'vac': vacquery_key => Sensitive('short') }" }

    it { is_expected.to compile.and_raise_error(/vacquery_key must have at least 16 characters/) }
  end

  context 'declared by class vac with its parameters from Hiera' do
    let(:hiera_config) { File.expand_path('../hiera.yaml', __dir__) }
    let(:pre_condition) { 'include vac' }

    it { is_expected.to compile.with_all_deps }

    it 'merges the site\'s and the factory\'s settings and machinetypes, the factory winning' do
      content = catalogue.resource('File', '/etc/vac.conf')[:content]
      expect(content).to match(/^total_processors = 8$/)
      expect(content).to match(/^factories = factory1\.example\.org factory2\.example\.org$/)
      expect(content).to match(/^\[machinetype lhcb\]\nroot_image = \S+\ntarget_share = 5\n/)
      expect(content).to match(/^\[machinetype atlas\]\ntarget_share = 1\n/)
    end

    it 'makes a plain Hiera key Sensitive' do
      key_file = catalogue.resource('File', '/etc/vac-vacquery.key')
      expect(key_file.sensitive_parameters).to include(:content)
      expect(key_file[:content]).to eq("a site key of at least sixteen bytes\n")
    end
  end

  context 'declared on its own' do
    it { is_expected.to compile.and_raise_error(/vac::config is private: declare class vac/) }
  end
end
