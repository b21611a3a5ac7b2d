# rspec-puppet set-up for the vac module: compiles catalogues against this directory.
#
# Puppet finds a module by its name, so the module path is a scratch directory holding a
# `vac` link to this one (what puppetlabs_spec_helper does from .fixtures.yml); nothing
# is written inside the source tree.
require 'fileutils'
require 'tmpdir'
require 'rspec-puppet'

module_root = File.expand_path('..', __dir__)
module_path = Dir.mktmpdir('vac-rspec-modules')
FileUtils.ln_s(module_root, File.join(module_path, 'vac'))
manifest_dir = File.join(module_path, 'manifests')
FileUtils.mkdir_p(manifest_dir)
at_exit { FileUtils.remove_entry(module_path) }

RSpec.configure do |c|
  # rspec-puppet would otherwise create spec/fixtures, spec/hosts ... in the source tree.
  c.setup_fixtures = false
  c.module_path = module_path
  c.manifest_dir = manifest_dir
  c.environmentpath = module_path
  c.strict_variables = true
end

# Facts of an EL9 factory, as Facter 4 reports them.
FACTORY_FACTS = {
  'networking' => {
    'fqdn' => 'factory1.example.org',
    'hostname' => 'factory1',
    'domain' => 'example.org',
  },
  'os' => {
    'family' => 'RedHat',
    'name' => 'AlmaLinux',
    'release' => { 'major' => '9', 'full' => '9.4' },
  },
  'kernel' => 'Linux',
}.freeze
