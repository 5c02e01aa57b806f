//! Connections to standalone Redis, Sentinel (the current master) or Cluster, behind one type,
//! re-established after errors.

use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{
    AsyncConnectionConfig, Client, Cmd, ConnectionAddr, IntoConnectionInfo, Pipeline, RedisError,
    RedisFuture, TlsMode, Value,
};
use tokio::sync::Mutex;

use crate::secret::Secret;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Where the store lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedisTarget {
    /// `redis://[user:password@]host:port[/db]` or `rediss://` for TLS.
    Standalone { url: Secret },
    /// Sentinels that know the master `master`.
    Sentinel { master: String, urls: Vec<Secret> },
    /// Any nodes of the cluster.
    Cluster { urls: Vec<Secret> },
}

impl RedisTarget {
    /// Checks the URLs without connecting.
    pub fn validate(&self) -> Result<(), String> {
        let check = |u: &Secret| {
            Client::open(u.expose())
                .map(|_| ())
                .map_err(|_| "not a redis:// or rediss:// URL".to_owned())
        };
        match self {
            Self::Standalone { url } => check(url),
            Self::Sentinel { master, urls } => {
                if master.is_empty() || urls.is_empty() {
                    return Err("sentinel needs a master name and at least one URL".into());
                }
                urls.iter().try_for_each(check)
            }
            Self::Cluster { urls } => {
                if urls.is_empty() {
                    return Err("cluster needs at least one URL".into());
                }
                urls.iter().try_for_each(check)
            }
        }
    }
}

/// One live connection (cheap to clone: both kinds multiplex).
#[derive(Clone)]
pub enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// How to talk to the master Sentinel names: the credentials, database and TLS of the first
/// Sentinel URL (`rediss://` means TLS to the master too). Without this the master would be
/// reached without a password and in clear.
fn master_connection(urls: &[Secret]) -> Result<SentinelNodeConnectionInfo, RedisError> {
    let Some(first) = urls.first() else {
        return Err(RedisError::from((
            redis::ErrorKind::Client,
            "sentinel needs at least one URL",
        )));
    };
    let info = first.expose().into_connection_info()?;
    let node = SentinelNodeConnectionInfo::default()
        .set_redis_connection_info(info.redis_settings().clone());
    Ok(match info.addr() {
        ConnectionAddr::TcpTls { insecure, .. } => node.set_tls_mode(if *insecure {
            TlsMode::Insecure
        } else {
            TlsMode::Secure
        }),
        _ => node,
    })
}

pub struct Connector {
    target: RedisTarget,
    current: Mutex<Option<Conn>>,
}

fn config() -> AsyncConnectionConfig {
    AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
}

impl Connector {
    pub fn new(target: RedisTarget) -> Self {
        Self {
            target,
            current: Mutex::new(None),
        }
    }

    /// The live connection, made on first use and after [`Connector::reset`].
    pub async fn get(&self) -> Result<Conn, RedisError> {
        let mut current = self.current.lock().await;
        if let Some(c) = current.as_ref() {
            return Ok(c.clone());
        }
        let c = self.connect().await?;
        *current = Some(c.clone());
        Ok(c)
    }

    /// Drops the connection after an error that may mean it is dead (or, with Sentinel, that
    /// the master moved): the next call connects anew.
    pub async fn reset(&self) {
        *self.current.lock().await = None;
    }

    async fn connect(&self) -> Result<Conn, RedisError> {
        match &self.target {
            RedisTarget::Standalone { url } => Ok(Conn::Single(
                Client::open(url.expose())?
                    .get_multiplexed_async_connection_with_config(&config())
                    .await?,
            )),
            RedisTarget::Sentinel { .. } => Ok(Conn::Single(
                self.sentinel_master()
                    .await?
                    .get_multiplexed_async_connection_with_config(&config())
                    .await?,
            )),
            RedisTarget::Cluster { urls } => {
                let client = ClusterClient::builder(urls.iter().map(|u| u.expose().to_owned()))
                    .connection_timeout(CONNECT_TIMEOUT)
                    .response_timeout(RESPONSE_TIMEOUT)
                    .build()?;
                Ok(Conn::Cluster(client.get_async_connection().await?))
            }
        }
    }

    async fn sentinel_master(&self) -> Result<Client, RedisError> {
        let RedisTarget::Sentinel { master, urls } = &self.target else {
            return Err(RedisError::from((
                redis::ErrorKind::Client,
                "not a sentinel target",
            )));
        };
        let mut sentinel = SentinelClient::build(
            urls.iter().map(|u| u.expose().to_owned()).collect(),
            master.clone(),
            Some(master_connection(urls)?),
            SentinelServerType::Master,
        )?;
        tokio::time::timeout(CONNECT_TIMEOUT * 3, sentinel.async_get_client())
            .await
            .map_err(|_| RedisError::from((redis::ErrorKind::Io, "sentinel timed out")))?
    }

    /// A client for a pub/sub connection (Sentinel's master with the same credentials and TLS
    /// as the data connection): the node itself, Sentinel's current master, or the
    /// first cluster node that answers (PUBLISH reaches every node of a cluster).
    pub async fn pubsub_client(&self) -> Result<Client, RedisError> {
        match &self.target {
            RedisTarget::Standalone { url } => Client::open(url.expose()),
            RedisTarget::Sentinel { .. } => self.sentinel_master().await,
            RedisTarget::Cluster { urls } => {
                let mut last = None;
                for u in urls {
                    let client = Client::open(u.expose())?;
                    match tokio::time::timeout(
                        CONNECT_TIMEOUT,
                        client.get_multiplexed_async_connection(),
                    )
                    .await
                    {
                        Ok(Ok(_)) => return Ok(client),
                        Ok(Err(e)) => last = Some(e),
                        Err(_) => {}
                    }
                }
                Err(last.unwrap_or_else(|| {
                    RedisError::from((redis::ErrorKind::Io, "no cluster node answers"))
                }))
            }
        }
    }
}
