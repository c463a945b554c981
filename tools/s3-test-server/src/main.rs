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
//! Same command line as `s3s-fs`:
//! `s3-test-server --host 127.0.0.1 --port 9000 --access-key AK --secret-key SK ROOT`.

use std::path::PathBuf;

use clap::Parser;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
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
    /// Root directory of stored data.
    root: PathBuf,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let opt = Opt::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();

    let fs = s3s_fs::FileSystem::new(&opt.root)
        .map_err(|e| format!("cannot serve {}: {e:?}", opt.root.display()))?;
    let mut builder = S3ServiceBuilder::new(fs);
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
