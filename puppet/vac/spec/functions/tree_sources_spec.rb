require 'spec_helper'

describe 'vac::tree_sources' do
  it 'lists the factory, each subspace in order, the space and the site, most specific first' do
    is_expected.to run
      .with_params('modules/vac/vac.d', 'factory1.example.org', 'vac01.example.org', ['gpu', 'big'])
      .and_return([
                    'puppet:///modules/vac/vac.d/factory1.example.org',
                    'puppet:///modules/vac/vac.d/vac01.example.org:gpu',
                    'puppet:///modules/vac/vac.d/vac01.example.org:big',
                    'puppet:///modules/vac/vac.d/vac01.example.org',
                    'puppet:///modules/vac/vac.d/site',
                  ])
  end

  it 'has no subspace entries when there are no subspaces' do
    is_expected.to run
      .with_params('modules/site/vac.d', 'f.example.org', 'space.example.org', [])
      .and_return([
                    'puppet:///modules/site/vac.d/f.example.org',
                    'puppet:///modules/site/vac.d/space.example.org',
                    'puppet:///modules/site/vac.d/site',
                  ])
  end

  it 'rejects an empty space name' do
    is_expected.to run.with_params('modules/vac/vac.d', 'f.example.org', '', []).and_raise_error(ArgumentError)
  end
end
