//! A TCP proxy to PostgreSQL that a test cuts and restores: the store made unreachable from a
//! process (the daemon's or the test's own) without stopping the server.

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A TCP proxy to PostgreSQL that the test can cut (every connection closed, new ones refused)
/// and restore.
pub struct Proxy {
    pub port: u16,
    /// `false` cuts: every open connection closed, new ones refused; `true` restores.
    pub up: watch::Sender<bool>,
}

pub async fn proxy(target: &str) -> Proxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (up, _) = watch::channel(true);
    let state = up.clone();
    let target = target.to_string();
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                continue;
            };
            if !*state.borrow() {
                let _ = client.shutdown().await;
                continue;
            }
            let mut cut = state.subscribe();
            let target = target.clone();
            tokio::spawn(async move {
                let Ok(mut server) = TcpStream::connect(&target).await else {
                    return;
                };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                    _ = cut.wait_for(|up| !*up) => {}
                }
            });
        }
    });
    Proxy { port, up }
}
