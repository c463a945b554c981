# Catalogue test (scripts/check-deploy): the class with its parameters from
# Hiera (data/common.yaml beside this file), under supervisord.
#
#   puppet apply --noop --modulepath puppet/modules --hiera_config puppet/tests/hiera.yaml puppet/tests/init.pp
include transcode_worker
