# Catalogue test (scripts/check-deploy): the class declared with parameters,
# under systemd, on the directory backend.
class { 'transcode_worker':
  binary_source     => '/usr/local/src/transcode-worker/target/release/transcode-worker',
  amqp_url          => 'amqp://farm:secret@rabbit.example.com:5672/%2f',
  storage_backend   => 'directory',
  storage_directory => '/mnt/videos',
  worker_count      => 3,
  drain_timeout     => 120,
  service_manager   => 'systemd',
  extra_env         => { 'TRANSCODE_WORKER__RETRY_DELAY' => '5s' },
}
