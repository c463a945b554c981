//! TLS for tests: throwaway certificate authorities made with the openssl
//! command, and a TLS-terminating relay that puts a real TLS endpoint in
//! front of a plain TCP server (the S3 server has no TLS of its own) and
//! counts the handshakes it saw.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};

/// A certificate authority and a server certificate for `localhost` and
/// `127.0.0.1`, in a temporary folder.
pub struct TestCa {
    dir: tempfile::TempDir,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TestCa {
    /// Makes the CA and the server certificate.
    pub fn new() -> TestCa {
        let dir = tempfile::tempdir().expect("ca dir");
        let d = dir.path();
        std::fs::write(
            d.join("san.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
        )
        .unwrap();
        openssl(
            d,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=transcode-test-ca",
            ],
        );
        openssl(
            d,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=localhost",
            ],
        );
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.pem",
                "-days",
                "2",
                "-extfile",
                "san.ext",
            ],
        );
        TestCa { dir }
    }

    /// The CA certificate (PEM), for `SSL_CERT_FILE`.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The server certificate (PEM).
    pub fn cert_file(&self) -> PathBuf {
        self.dir.path().join("server.pem")
    }

    /// The server key (PKCS#8 PEM).
    pub fn key_file(&self) -> PathBuf {
        self.dir.path().join("server.key")
    }

    fn acceptor(&self) -> tokio_native_tls::TlsAcceptor {
        let cert = std::fs::read(self.cert_file()).unwrap();
        let key = std::fs::read(self.key_file()).unwrap();
        let identity = tokio_native_tls::native_tls::Identity::from_pkcs8(&cert, &key)
            .expect("server identity");
        tokio_native_tls::native_tls::TlsAcceptor::new(identity)
            .expect("tls acceptor")
            .into()
    }
}

/// A TLS endpoint on a loopback port that relays each connection, once its
/// handshake succeeded, in plain TCP to a target port; it counts the
/// handshakes that succeeded and those that failed (a client that refused
/// the certificate, or one that spoke plaintext). Runs until the test's
/// runtime ends.
pub struct TlsRelay {
    port: u16,
    handshakes: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
}

impl TlsRelay {
    /// The port clients connect to with TLS.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Handshakes that succeeded so far.
    pub fn handshakes(&self) -> usize {
        self.handshakes.load(Ordering::SeqCst)
    }

    /// Connections whose TLS handshake failed so far.
    pub fn failed_handshakes(&self) -> usize {
        self.failed.load(Ordering::SeqCst)
    }
}

/// Accepts TLS with `ca`'s server certificate on a loopback port and relays
/// each connection in plain TCP to `target_port`.
pub async fn tls_relay(ca: &TestCa, target_port: u16) -> TlsRelay {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
    let port = listener.local_addr().unwrap().port();
    let acceptor = ca.acceptor();
    let handshakes = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let relay = TlsRelay {
        port,
        handshakes: handshakes.clone(),
        failed: failed.clone(),
    };
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let handshakes = handshakes.clone();
            let failed = failed.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(client).await else {
                    failed.fetch_add(1, Ordering::SeqCst);
                    return;
                };
                handshakes.fetch_add(1, Ordering::SeqCst);
                let Ok(mut server) = TcpStream::connect(("127.0.0.1", target_port)).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut server).await;
            });
        }
    });
    relay
}
