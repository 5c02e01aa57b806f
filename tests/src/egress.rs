//! Minimal egress proxies on loopback (HTTP forward/CONNECT and SOCKS5) that count what
//! passes through them, to prove a group's traffic really takes its egress proxy.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EgressKind {
    /// `http://`: absolute-form requests and CONNECT tunnels.
    Http,
    /// `socks5://`, no authentication.
    Socks5,
}

#[derive(Clone)]
pub struct EgressProxy {
    pub addr: SocketAddr,
    pub kind: EgressKind,
    connections: Arc<AtomicUsize>,
}

impl EgressProxy {
    pub async fn start(kind: EgressKind) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind egress");
        let addr = listener.local_addr().expect("egress addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let count = connections.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let _ = match kind {
                        EgressKind::Http => http_proxy(sock).await,
                        EgressKind::Socks5 => socks5(sock).await,
                    };
                });
            }
        });
        Self {
            addr,
            kind,
            connections,
        }
    }

    pub fn url(&self) -> String {
        match self.kind {
            EgressKind::Http => format!("http://{}", self.addr),
            EgressKind::Socks5 => format!("socks5://{}", self.addr),
        }
    }

    /// Client connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

async fn http_proxy(mut client: TcpStream) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = client.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let line = text.lines().next().unwrap_or_default().to_owned();
    let mut parts = line.split(' ');
    let method = parts.next().unwrap_or_default();
    let target = parts.next().unwrap_or_default();
    if method == "CONNECT" {
        let mut upstream = TcpStream::connect(target).await?;
        client
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .await?;
        let end = head.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(0) + 4;
        upstream.write_all(&head[end..]).await?;
        tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    } else {
        // Absolute form: `POST http://host:port/path HTTP/1.1`; forward the bytes as they are.
        let authority = target
            .strip_prefix("http://")
            .and_then(|r| r.split('/').next())
            .unwrap_or_default()
            .to_owned();
        let mut upstream = TcpStream::connect(authority).await?;
        upstream.write_all(&head).await?;
        tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    }
    Ok(())
}

async fn socks5(mut client: TcpStream) -> std::io::Result<()> {
    let mut hello = [0u8; 2];
    client.read_exact(&mut hello).await?;
    let mut methods = vec![0u8; hello[1] as usize];
    client.read_exact(&mut methods).await?;
    client.write_all(&[5, 0]).await?;
    let mut req = [0u8; 4];
    client.read_exact(&mut req).await?;
    let host = match req[3] {
        1 => {
            let mut ip = [0u8; 4];
            client.read_exact(&mut ip).await?;
            std::net::Ipv4Addr::from(ip).to_string()
        }
        3 => {
            let mut len = [0u8; 1];
            client.read_exact(&mut len).await?;
            let mut name = vec![0u8; len[0] as usize];
            client.read_exact(&mut name).await?;
            String::from_utf8_lossy(&name).into_owned()
        }
        _ => return Ok(()),
    };
    let mut port = [0u8; 2];
    client.read_exact(&mut port).await?;
    let mut upstream = TcpStream::connect((host.as_str(), u16::from_be_bytes(port))).await?;
    client.write_all(&[5, 0, 0, 1, 0, 0, 0, 0, 0, 0]).await?;
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    Ok(())
}
