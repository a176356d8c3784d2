//! The node's settings: defaults, then a YAML file (`--config`), then environment variables
//! (`SHOAL__SECTION__KEY`), then command-line flags, each overriding the one before.

use std::path::PathBuf;

use clap::Parser;
use serde::{Deserialize, Serialize};

const ENV_HELP: &str = "\
Every setting can also come from a YAML file (--config) or from an environment variable named
SHOAL__<SECTION>__<KEY>. Precedence: flags > environment > file > defaults.

  section.key                  environment variable                  default
  service.host                 SHOAL__SERVICE__HOST                  0.0.0.0
  service.http_port            SHOAL__SERVICE__HTTP_PORT             6333
  service.grpc_port            SHOAL__SERVICE__GRPC_PORT             6334 (0 = off)
  service.api_key              SHOAL__SERVICE__API_KEY               (none)
  service.read_only_api_key    SHOAL__SERVICE__READ_ONLY_API_KEY     (none)
  service.max_request_size_mb  SHOAL__SERVICE__MAX_REQUEST_SIZE_MB   32
  service.http_header_read_timeout_sec  SHOAL__SERVICE__HTTP_HEADER_READ_TIMEOUT_SEC  30 (1 to 86400)
  cluster.p2p_port             SHOAL__CLUSTER__P2P_PORT              6335
  cluster.uri                  SHOAL__CLUSTER__URI                   (none)
  cluster.bootstrap            SHOAL__CLUSTER__BOOTSTRAP             (none)
  cluster.peer_name            SHOAL__CLUSTER__PEER_NAME             (host name)
  cluster.max_transfers_per_peer  SHOAL__CLUSTER__MAX_TRANSFERS_PER_PEER  2
  cluster.transfer_batch_points   SHOAL__CLUSTER__TRANSFER_BATCH_POINTS   256
  storage.data_dir             SHOAL__STORAGE__DATA_DIR              ./data
  storage.wal_sync             SHOAL__STORAGE__WAL_SYNC              os (or fsync)
  storage.optimizer_threads    SHOAL__STORAGE__OPTIMIZER_THREADS     0 (= all cores)
  log.level                    SHOAL__LOG__LEVEL                     info
  log.format                   SHOAL__LOG__FORMAT                    text (or json)";

/// Shoal node: a vector database that speaks the Qdrant REST API.
#[derive(Debug, Parser, Default)]
#[command(name = "shoal-node", version, about, after_long_help = ENV_HELP, after_help = ENV_HELP)]
pub struct Cli {
    /// Directory for all data of this node (collections, WAL, cluster state) [default: ./data]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Port of the REST API [default: 6333]
    #[arg(long, value_name = "PORT")]
    pub http_port: Option<u16>,
    /// Port of Qdrant's client gRPC API; 0 turns it off [default: 6334]
    #[arg(long, value_name = "PORT")]
    pub grpc_port: Option<u16>,
    /// Port of the internal gRPC service (peers and the operator) [default: 6335]
    #[arg(long, value_name = "PORT")]
    pub p2p_port: Option<u16>,
    /// Address the REST and gRPC servers bind to [default: 0.0.0.0]
    #[arg(long, value_name = "ADDR")]
    pub host: Option<String>,
    /// This peer's p2p URI as other peers reach it, e.g. http://shoal-0.shoal:6335
    #[arg(long, value_name = "URI")]
    pub uri: Option<String>,
    /// p2p URI of any member of the cluster to join
    #[arg(long, value_name = "URI")]
    pub bootstrap: Option<String>,
    /// This peer's name in cluster state [default: the host name]
    #[arg(long, value_name = "NAME")]
    pub peer_name: Option<String>,
    /// YAML file with settings (see below)
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Read-write API key; when set, every data and admin request must carry it
    #[arg(long, value_name = "KEY")]
    pub api_key: Option<String>,
    /// Read-only API key: reads only
    #[arg(long, value_name = "KEY")]
    pub read_only_api_key: Option<String>,
    /// Log level or filter, e.g. info or shoal_node=debug [default: info]
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceSettings {
    pub host: String,
    pub http_port: u16,
    /// Port of Qdrant's client gRPC API (`qdrant.Points`, `qdrant.Collections`, ...); 0 turns
    /// it off.
    pub grpc_port: u16,
    pub api_key: Option<String>,
    pub read_only_api_key: Option<String>,
    pub max_request_size_mb: usize,
    /// Seconds an HTTP/1.1 client of the REST port may take to send a whole request head,
    /// counted from when the connection waits for one (so also the longest a keep-alive
    /// connection stays open between requests); then the connection is closed. 1 to 86,400.
    pub http_header_read_timeout_sec: u64,
}

impl Default for ServiceSettings {
    fn default() -> Self {
        ServiceSettings {
            host: "0.0.0.0".into(),
            http_port: 6333,
            grpc_port: 6334,
            api_key: None,
            read_only_api_key: None,
            max_request_size_mb: 32,
            http_header_read_timeout_sec: 30,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterSettings {
    pub p2p_port: u16,
    pub uri: Option<String>,
    pub bootstrap: Option<String>,
    pub peer_name: Option<String>,
    /// At most this many transfers may send from, and as many receive on, one peer at once.
    pub max_transfers_per_peer: u32,
    /// Points per batch of a streaming transfer.
    pub transfer_batch_points: usize,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            p2p_port: 6335,
            uri: None,
            bootstrap: None,
            peer_name: None,
            max_transfers_per_peer: 2,
            transfer_batch_points: 256,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum WalSync {
    #[default]
    Os,
    Fsync,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageSettings {
    pub data_dir: PathBuf,
    pub wal_sync: WalSync,
    pub optimizer_threads: usize,
}

impl Default for StorageSettings {
    fn default() -> Self {
        StorageSettings {
            data_dir: PathBuf::from("./data"),
            wal_sync: WalSync::Os,
            optimizer_threads: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub service: ServiceSettings,
    pub cluster: ClusterSettings,
    pub storage: StorageSettings,
    pub log: LogSettings,
}

impl Settings {
    /// Layers the file named by `cli.config`, the `SHOAL__*` environment and the flags.
    pub fn load(cli: &Cli) -> Result<Settings, config::ConfigError> {
        Self::load_from(cli, config::Environment::with_prefix("SHOAL"))
    }

    fn load_from(cli: &Cli, env: config::Environment) -> Result<Settings, config::ConfigError> {
        let mut builder = config::Config::builder();
        if let Some(path) = &cli.config {
            builder = builder.add_source(
                config::File::from(path.as_path())
                    .format(config::FileFormat::Yaml)
                    .required(true),
            );
        }
        builder = builder.add_source(env.prefix_separator("__").separator("__").try_parsing(true));
        let mut settings: Settings = builder.build()?.try_deserialize()?;
        let s = &mut settings;
        if let Some(v) = &cli.data_dir {
            s.storage.data_dir = v.clone();
        }
        if let Some(v) = cli.http_port {
            s.service.http_port = v;
        }
        if let Some(v) = cli.grpc_port {
            s.service.grpc_port = v;
        }
        if let Some(v) = cli.p2p_port {
            s.cluster.p2p_port = v;
        }
        if let Some(v) = &cli.host {
            s.service.host = v.clone();
        }
        if let Some(v) = &cli.uri {
            s.cluster.uri = Some(v.clone());
        }
        if let Some(v) = &cli.bootstrap {
            s.cluster.bootstrap = Some(v.clone());
        }
        if let Some(v) = &cli.peer_name {
            s.cluster.peer_name = Some(v.clone());
        }
        if let Some(v) = &cli.api_key {
            s.service.api_key = Some(v.clone());
        }
        if let Some(v) = &cli.read_only_api_key {
            s.service.read_only_api_key = Some(v.clone());
        }
        if let Some(v) = &cli.log_level {
            s.log.level = v.clone();
        }
        // An empty key (e.g. from an unset chart value) means "no key", not "the empty key".
        for key in [&mut s.service.api_key, &mut s.service.read_only_api_key] {
            if key.as_deref().is_some_and(str::is_empty) {
                *key = None;
            }
        }
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> config::Environment {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        config::Environment::with_prefix("SHOAL").source(Some(map))
    }

    #[test]
    fn defaults_match_the_documented_ones() {
        let s = Settings::load_from(&Cli::default(), env(&[])).unwrap();
        assert_eq!(s.service.http_port, 6333);
        assert_eq!(s.service.grpc_port, 6334);
        assert_eq!(s.cluster.p2p_port, 6335);
        assert_eq!(s.storage.data_dir, PathBuf::from("./data"));
        assert!(s.service.api_key.is_none());
    }

    #[test]
    fn file_then_environment_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("shoal.yaml");
        std::fs::write(
            &file,
            "service:\n  http_port: 7000\n  api_key: from-file\nstorage:\n  data_dir: /from/file\n",
        )
        .unwrap();
        let cli = Cli {
            config: Some(file.clone()),
            http_port: Some(9000),
            ..Cli::default()
        };
        let s = Settings::load_from(
            &cli,
            env(&[
                ("SHOAL__SERVICE__HTTP_PORT", "8000"),
                ("SHOAL__CLUSTER__P2P_PORT", "8001"),
                ("SHOAL__SERVICE__API_KEY", "from-env"),
            ]),
        )
        .unwrap();
        assert_eq!(s.service.http_port, 9000, "a flag beats the environment");
        assert_eq!(s.cluster.p2p_port, 8001, "the environment beats defaults");
        assert_eq!(
            s.service.api_key.as_deref(),
            Some("from-env"),
            "the environment beats the file"
        );
        assert_eq!(s.storage.data_dir, PathBuf::from("/from/file"));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.yaml");
        std::fs::write(&file, "service:\n  http_prot: 7000\n").unwrap();
        let cli = Cli {
            config: Some(file),
            ..Cli::default()
        };
        assert!(Settings::load_from(&cli, env(&[])).is_err());
        assert!(
            Settings::load_from(
                &Cli::default(),
                env(&[("SHOAL__SERVICE__HTTP_PORT", "not-a-port")])
            )
            .is_err()
        );
    }

    #[test]
    fn help_documents_every_flag() {
        use clap::CommandFactory;
        let help = Cli::command().render_long_help().to_string();
        for flag in [
            "--data-dir",
            "--http-port",
            "--p2p-port",
            "--uri",
            "--bootstrap",
            "--config",
            "--api-key",
            "--read-only-api-key",
            "--peer-name",
        ] {
            assert!(help.contains(flag), "{flag} missing from --help");
        }
        assert!(help.contains("SHOAL__SERVICE__HTTP_PORT"));
    }
}
