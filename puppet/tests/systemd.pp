# Catalogue test (scripts/check-deploy): the class declared with parameters,
# under systemd, on the directory backend. The parameters not given here
# come from the same Hiera data as init.pp's (the dashboard's token, ingest's
# rules and poll interval).
class { 'transcode_worker':
  binary_source     => '/usr/local/src/transcode-worker/target/release/transcode-worker',
  amqp_url          => 'amqp://farm:secret@rabbit.example.com:5672/%2f',
  storage_backend   => 'directory',
  storage_directory => '/mnt/videos',
  worker_count      => 3,
  drain_timeout     => 120,
  service_manager   => 'systemd',
  extra_env         => { 'TRANSCODE_WORKER__RETRY_DELAY' => '5s' },
  dashboard         => true,
  dashboard_listen  => '[::1]:3000',
}
