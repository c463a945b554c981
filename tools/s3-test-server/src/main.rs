//! `s3-test-server`: the S3 server the tests and benchmarks run. It is the
//! file-system S3 implementation of the `s3s-fs` library (buckets are
//! folders under ROOT, objects files), served over HTTP as the `s3s-fs`
//! binary serves it, with one difference: every connection has
//! `TCP_NODELAY` set, as production S3 servers (MinIO, AWS) do.
//!
//! Without it, a GET on a reused connection waits about 40 ms for the
//! client's delayed ACK before the rest of the response leaves (Nagle's
//! algorithm), a delay no real deployment has and one that would swamp the
//! per-job cost the benchmarks measure.
//!
//! s3s-fs checks a conditional `PutObject` (`If-None-Match: *`, `If-Match`)
//! and then writes, so two such requests for one key at the same moment
//! could both succeed; this server runs conditional puts one at a time,
//! so a create-if-absent has one winner, as on AWS S3. With
//! `--conditional-writes ignore` it drops those two headers from every
//! `PutObject` instead, as servers without conditional writes do (Garage
//! 2.5.0 answers 200 to every such put), with `refuse` it answers such
//! puts `NotImplemented`, and with `fail` `PreconditionFailed` whether the
//! object is there or not, as other servers do, so the tests can see what
//! the worker does on such storage.
//!
//! With `--get-delay-ms` and `--get-mib-per-second` every `GetObject`
//! waits, before it answers, as long as a server across a network would
//! take to deliver it (a delay, then the body at that rate; the body then
//! comes at once), so the benchmarks can measure what a worker does with
//! storage far away. With `--ignore-ranges` it answers every `GetObject`
//! with the whole object, as a server without range reads would.
//!
//! The s3s-fs library has no `ListMultipartUploads`; this server adds it:
//! it notes each multipart upload it starts (bucket, key, id, time) until
//! it is completed or aborted, and lists them by bucket and key prefix. The
//! list lives in memory, so it starts empty when the server does.
//!
//! Same command line as `s3s-fs`:
//! `s3-test-server --host 127.0.0.1 --port 9000 --access-key AK --secret-key SK ROOT`.

use std::path::PathBuf;

use std::sync::Mutex;
use std::time::SystemTime;

use clap::Parser;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::dto::*;
use s3s::service::S3ServiceBuilder;
use s3s::{S3Request, S3Response, S3Result, S3};
use tokio::net::TcpListener;

/// Command line.
#[derive(Debug, Parser)]
#[command(version = concat!(env!("CARGO_PKG_VERSION"), " (s3s-fs 0.14.1, TCP_NODELAY)"))]
struct Opt {
    /// Host name to listen on.
    #[arg(long, default_value = "localhost")]
    host: String,
    /// Port number to listen on.
    #[arg(long, default_value = "8014")]
    port: u16,
    /// Access key used for authentication (with --secret-key).
    #[arg(long, requires = "secret_key")]
    access_key: Option<String>,
    /// Secret key used for authentication (with --access-key).
    #[arg(long, requires = "access_key")]
    secret_key: Option<String>,
    /// What to do with `If-None-Match` and `If-Match` on `PutObject`:
    /// honour them, ignore them (write whatever is there), refuse the put
    /// (`NotImplemented`) or fail it (`PreconditionFailed`, object or
    /// not), as servers without conditional writes do.
    #[arg(long, value_enum, default_value = "honour")]
    conditional_writes: Conditional,
    /// Milliseconds each `GetObject` waits before it answers, as a server
    /// across a network does (with `--get-mib-per-second`, a model of
    /// storage far away).
    #[arg(long, default_value_t = 0)]
    get_delay_ms: u64,
    /// Each `GetObject` also waits as long as its body takes at this many
    /// MiB a second (then answers at once); 0: no limit.
    #[arg(long, default_value_t = 0.0)]
    get_mib_per_second: f64,
    /// Answer every `GetObject` with the whole object (HTTP 200), its
    /// `Range` header ignored, as a server without range reads would.
    #[arg(long)]
    ignore_ranges: bool,
    /// Root directory of stored data.
    root: PathBuf,
}

/// `--conditional-writes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Conditional {
    Honour,
    Ignore,
    Refuse,
    Fail,
}

/// The s3s-fs file system plus the list of unfinished multipart uploads.
struct Store {
    fs: s3s_fs::FileSystem,
    uploads: Mutex<Vec<Upload>>,
    /// Held by a conditional put from its check to its write.
    conditional: tokio::sync::Mutex<()>,
    /// `--conditional-writes`.
    conditional_writes: Conditional,
    /// `--get-delay-ms` and `--get-mib-per-second`.
    far: Far,
    /// `--ignore-ranges`.
    ignore_ranges: bool,
}

/// How far away the server plays it is: each `GetObject` answers after
/// `delay` plus its length at `bytes_per_second`.
#[derive(Debug, Clone, Copy)]
struct Far {
    delay: std::time::Duration,
    bytes_per_second: f64,
}

impl Far {
    /// How long a `GetObject` of `bytes` waits before it answers.
    fn wait(&self, bytes: u64) -> std::time::Duration {
        let transfer = if self.bytes_per_second > 0.0 {
            std::time::Duration::from_secs_f64(bytes as f64 / self.bytes_per_second)
        } else {
            std::time::Duration::ZERO
        };
        self.delay + transfer
    }
}

/// A multipart upload started and not yet completed or aborted.
struct Upload {
    bucket: String,
    key: String,
    id: String,
    initiated: SystemTime,
}

impl Store {
    fn forget(&self, id: &str) {
        let mut uploads = self.uploads.lock().unwrap_or_else(|p| p.into_inner());
        uploads.retain(|u| u.id != id);
    }
}

/// `impl S3 for Store`: the `forward` operations go to s3s-fs as they are;
/// the `own` ones are written out.
macro_rules! s3_impl {
    (forward { $($name:ident: $input:ident => $output:ident,)* } own { $($own:tt)* }) => {
        #[async_trait::async_trait]
        impl S3 for Store {
            $(
                async fn $name(&self, req: S3Request<$input>) -> S3Result<S3Response<$output>> {
                    self.fs.$name(req).await
                }
            )*
            $($own)*
        }
    };
}

s3_impl! {
    forward {
        create_bucket: CreateBucketInput => CreateBucketOutput,
        copy_object: CopyObjectInput => CopyObjectOutput,
        delete_bucket: DeleteBucketInput => DeleteBucketOutput,
        delete_object: DeleteObjectInput => DeleteObjectOutput,
        delete_objects: DeleteObjectsInput => DeleteObjectsOutput,
        get_bucket_location: GetBucketLocationInput => GetBucketLocationOutput,
        head_bucket: HeadBucketInput => HeadBucketOutput,
        head_object: HeadObjectInput => HeadObjectOutput,
        list_buckets: ListBucketsInput => ListBucketsOutput,
        list_objects: ListObjectsInput => ListObjectsOutput,
        list_objects_v2: ListObjectsV2Input => ListObjectsV2Output,
        upload_part: UploadPartInput => UploadPartOutput,
        upload_part_copy: UploadPartCopyInput => UploadPartCopyOutput,
        list_parts: ListPartsInput => ListPartsOutput,
    }
    own {
        async fn get_object(
            &self,
            mut req: S3Request<GetObjectInput>,
        ) -> S3Result<S3Response<GetObjectOutput>> {
            if self.ignore_ranges {
                req.input.range = None;
            }
            let response = self.fs.get_object(req).await?;
            let bytes = response.output.content_length.unwrap_or(0).max(0) as u64;
            let wait = self.far.wait(bytes);
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            Ok(response)
        }

        async fn put_object(
            &self,
            mut req: S3Request<PutObjectInput>,
        ) -> S3Result<S3Response<PutObjectOutput>> {
            let conditional = req.input.if_none_match.is_some() || req.input.if_match.is_some();
            match self.conditional_writes {
                Conditional::Honour => {}
                Conditional::Ignore => {
                    req.input.if_none_match = None;
                    req.input.if_match = None;
                }
                Conditional::Refuse if conditional => {
                    return Err(s3s::s3_error!(
                        NotImplemented,
                        "A header you provided implies functionality that is not implemented."
                    ));
                }
                Conditional::Fail if conditional => {
                    return Err(s3s::s3_error!(
                        PreconditionFailed,
                        "At least one of the pre-conditions you specified did not hold"
                    ));
                }
                Conditional::Refuse | Conditional::Fail => {}
            }
            if req.input.if_none_match.is_some() || req.input.if_match.is_some() {
                let _one_at_a_time = self.conditional.lock().await;
                return self.fs.put_object(req).await;
            }
            self.fs.put_object(req).await
        }

        async fn create_multipart_upload(
            &self,
            req: S3Request<CreateMultipartUploadInput>,
        ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
            let (bucket, key) = (req.input.bucket.clone(), req.input.key.clone());
            let response = self.fs.create_multipart_upload(req).await?;
            if let Some(id) = &response.output.upload_id {
                let mut uploads = self.uploads.lock().unwrap_or_else(|p| p.into_inner());
                uploads.push(Upload {
                    bucket,
                    key,
                    id: id.clone(),
                    initiated: SystemTime::now(),
                });
            }
            Ok(response)
        }

        async fn complete_multipart_upload(
            &self,
            req: S3Request<CompleteMultipartUploadInput>,
        ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
            let id = req.input.upload_id.clone();
            let response = self.fs.complete_multipart_upload(req).await?;
            self.forget(&id);
            Ok(response)
        }

        async fn abort_multipart_upload(
            &self,
            req: S3Request<AbortMultipartUploadInput>,
        ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
            let id = req.input.upload_id.clone();
            let response = self.fs.abort_multipart_upload(req).await?;
            self.forget(&id);
            Ok(response)
        }

        async fn list_multipart_uploads(
            &self,
            req: S3Request<ListMultipartUploadsInput>,
        ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
            let input = req.input;
            let prefix = input.prefix.clone().unwrap_or_default();
            let mut listed: Vec<MultipartUpload> = {
                let uploads = self.uploads.lock().unwrap_or_else(|p| p.into_inner());
                uploads
                    .iter()
                    .filter(|u| u.bucket == input.bucket && u.key.starts_with(&prefix))
                    .map(|u| MultipartUpload {
                        key: Some(u.key.clone()),
                        upload_id: Some(u.id.clone()),
                        initiated: Some(Timestamp::from(u.initiated)),
                        storage_class: Some(StorageClass::from_static(StorageClass::STANDARD)),
                        ..Default::default()
                    })
                    .collect()
            };
            listed.sort_by(|a, b| (&a.key, &a.upload_id).cmp(&(&b.key, &b.upload_id)));
            Ok(S3Response::new(ListMultipartUploadsOutput {
                bucket: Some(input.bucket),
                prefix: input.prefix,
                max_uploads: Some(1000),
                is_truncated: Some(false),
                uploads: Some(listed),
                ..Default::default()
            }))
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let opt = Opt::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();

    let fs = s3s_fs::FileSystem::new(&opt.root)
        .map_err(|e| format!("cannot serve {}: {e:?}", opt.root.display()))?;
    let mut builder = S3ServiceBuilder::new(Store {
        fs,
        uploads: Mutex::new(Vec::new()),
        conditional: tokio::sync::Mutex::new(()),
        conditional_writes: opt.conditional_writes,
        far: Far {
            delay: std::time::Duration::from_millis(opt.get_delay_ms),
            bytes_per_second: opt.get_mib_per_second * (1 << 20) as f64,
        },
        ignore_ranges: opt.ignore_ranges,
    });
    if let (Some(access_key), Some(secret_key)) = (opt.access_key, opt.secret_key) {
        builder.set_auth(SimpleAuth::from_single(access_key, secret_key));
    }
    let service = builder.build();

    let listener = TcpListener::bind((opt.host.as_str(), opt.port)).await?;
    println!("server is running at http://{}", listener.local_addr()?);
    let http = ConnBuilder::new(TokioExecutor::new());
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
    loop {
        let socket = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((socket, _)) => socket,
                Err(e) => {
                    eprintln!("error accepting a connection: {e}");
                    continue;
                }
            },
            _ = ctrl_c.as_mut() => break,
        };
        if let Err(e) = socket.set_nodelay(true) {
            eprintln!("cannot set TCP_NODELAY: {e}");
        }
        let connection = http.serve_connection(TokioIo::new(socket), service.clone());
        let connection = graceful.watch(connection.into_owned());
        tokio::spawn(async move {
            let _ = connection.await;
        });
    }
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(std::time::Duration::from_secs(10)) => {}
    }
    Ok(())
}
