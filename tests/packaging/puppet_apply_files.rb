# Compiles class vac for a factory from a manifest and applies the catalogue's File
# resources, each re-rooted under a scratch directory: what the agent would write, with the
# modes Puppet itself gives (recursive trees, symbolic modes, the search bit on directories).
#
# Usage: ruby puppet_apply_files.rb ROOT MODULE_PATH STATE_DIR MANIFEST
# Exec, Service and Package resources are left out (they would act on this host), and so is
# vac.conf's validate_cmd (it names /usr/sbin/vacd). Exits non-zero if any file failed.
require 'puppet'

root, module_path, state, manifest = ARGV
settings = %w[confdir vardir codedir logdir rundir publicdir].map { |name| "--#{name}=#{state}/#{name}" }
Puppet.initialize_settings(settings + ["--modulepath=#{module_path}"])
# puppet apply's own choice: puppet:/// URLs are read from the module path, no server.
Puppet[:default_file_terminus] = :file_server
Puppet::Util::Log.newdestination(:console)

fqdn = 'factory1.example.org'
facts = {
  'networking' => { 'fqdn' => fqdn, 'hostname' => 'factory1', 'domain' => 'example.org' },
  'os' => { 'family' => 'RedHat', 'name' => 'AlmaLinux', 'release' => { 'major' => '9', 'full' => '9.4' } },
  'kernel' => 'Linux',
}
Puppet[:code] = File.read(manifest)
environment = Puppet.lookup(:environments).get!('production')
node = Puppet::Node.new(fqdn, facts: Puppet::Node::Facts.new(fqdn, facts), environment: environment)
compiled = Puppet::Parser::Compiler.compile(node)

files = Puppet::Resource::Catalog.new(fqdn, environment)
left_out = %i[require before notify subscribe validate_cmd]
compiled.resources.select { |resource| resource.type == 'File' }.each do |resource|
  path = File.join(root, resource.title)
  parameters = resource.to_hash.reject { |name, _| left_out.include?(name) }.merge(path: path)
  files.add_resource(Puppet::Resource.new('File', path, parameters: parameters))
end
Puppet.override(current_environment: environment) do
  report = files.to_ral.apply.report
  failed = report.resource_statuses.values.select(&:failed).map(&:resource)
  abort("failed: #{failed.join(', ')}") unless failed.empty?
end
