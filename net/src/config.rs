//! Configuration files (O5), the same way for every binary: TOML, unknown keys refused, every
//! value checked once at load, errors that name the file and the key; written at first start
//! with every key and its default.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error(transparent)]
    Read(#[from] crate::fsutil::ReadError),
    /// The file is not valid TOML for this configuration (unknown key, wrong type …).
    #[error("{}: invalid configuration: {source}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said (names the key).
        source: toml::de::Error,
    },
    /// A value parses but makes no sense (names the key and what would work).
    #[error("{}invalid configuration: {what}", path.as_ref().map(|p| format!("{}: ", p.display())).unwrap_or_default())]
    Invalid {
        /// The file, when it came from one.
        path: Option<PathBuf>,
        /// The key and the fix.
        what: String,
    },
    /// The file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
}

impl ConfigError {
    /// A value that makes no sense; `what` names the key and the fix.
    pub fn invalid(what: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: None,
            what: what.into(),
        }
    }

    fn in_file(self, file: &Path) -> ConfigError {
        match self {
            ConfigError::Invalid { path: None, what } => ConfigError::Invalid {
                path: Some(file.to_owned()),
                what,
            },
            other => other,
        }
    }
}

/// `Ok(())` or an [`ConfigError::Invalid`] with `what`.
pub fn ensure(ok: bool, what: impl FnOnce() -> String) -> Result<(), ConfigError> {
    if ok {
        Ok(())
    } else {
        Err(ConfigError::invalid(what()))
    }
}

/// A configuration that knows its own rules.
pub trait Validate {
    /// Checks values that parse but make no sense.
    fn validate(&self) -> Result<(), ConfigError>;
}

/// Reads, parses and validates a configuration file.
pub fn load<T: DeserializeOwned + Validate>(path: &Path) -> Result<T, ConfigError> {
    let text = crate::fsutil::read_string(path)?;
    let cfg: T = toml::from_str(&text).map_err(|source| ConfigError::Parse {
        path: path.to_owned(),
        source,
    })?;
    cfg.validate().map_err(|e| e.in_file(path))?;
    Ok(cfg)
}

/// The file as written at first start: a header comment, then every key.
pub fn commented<T: Serialize>(header: &str, cfg: &T) -> String {
    let body = toml::to_string_pretty(cfg).expect("configuration serializes");
    let mut out = String::new();
    for line in header.lines() {
        out.push_str("# ");
        out.push_str(line);
        out.push('\n');
    }
    out.push_str(&body);
    out
}

/// Writes `cfg` to `path` (durably), with `header` as a comment, after validating it.
pub fn write<T: Serialize + Validate>(
    path: &Path,
    header: &str,
    cfg: &T,
) -> Result<(), ConfigError> {
    cfg.validate()?;
    crate::fsutil::write_atomic(path, commented(header, cfg).as_bytes(), false).map_err(|source| {
        ConfigError::Write {
            path: path.to_owned(),
            source,
        }
    })
}

/// The config at `path`, creating it first from `first` when it does not exist (first start).
pub fn load_or_create<T, F>(path: &Path, header: &str, first: F) -> Result<T, ConfigError>
where
    T: Serialize + DeserializeOwned + Validate,
    F: FnOnce() -> Result<T, ConfigError>,
{
    if !path.exists() {
        write(path, header, &first()?)?;
    }
    load(path)
}

/// Checks that each address is `host:port`; `key` names the setting.
pub fn check_addresses<'a>(
    key: &str,
    addrs: impl IntoIterator<Item = &'a String>,
) -> Result<(), ConfigError> {
    for a in addrs {
        ensure(
            a.rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok()),
            || format!("{key}: {a:?} is not host:port"),
        )?;
    }
    Ok(())
}

/// One `host:port` or an ordered list of them (`server = "hq:4700"` or
/// `server = ["hq-1:4700", "hq-2:4700"]`): the server instances of one deployment (P2). Written
/// back as a string when there is one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Addresses(pub Vec<String>);

impl Addresses {
    /// One address (empty: none).
    pub fn one(a: impl Into<String>) -> Addresses {
        let a = a.into();
        Addresses(if a.is_empty() { vec![] } else { vec![a] })
    }

    /// Addresses separated by commas (a command-line value).
    pub fn from_commas(s: &str) -> Addresses {
        Addresses(
            s.split(',')
                .map(|a| a.trim().to_owned())
                .filter(|a| !a.is_empty())
                .collect(),
        )
    }

    /// Whether none is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The addresses in order.
    pub fn iter(&self) -> std::slice::Iter<'_, String> {
        self.0.iter()
    }

    /// The list starting at a place chosen by `who` (a device id): clients of one deployment
    /// spread evenly over equal instances and each keeps its place across restarts.
    pub fn spread_for(&self, who: &str) -> Vec<String> {
        let mut v = self.0.clone();
        if !v.is_empty() {
            let h = who.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
            });
            let n = v.len();
            v.rotate_left((h % n as u64) as usize);
        }
        v
    }
}

impl From<&str> for Addresses {
    fn from(a: &str) -> Addresses {
        Addresses::one(a)
    }
}

impl From<String> for Addresses {
    fn from(a: String) -> Addresses {
        Addresses::one(a)
    }
}

impl std::fmt::Display for Addresses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join(", "))
    }
}

impl Serialize for Addresses {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.as_slice() {
            [] => s.serialize_str(""),
            [one] => s.serialize_str(one),
            many => many.serialize(s),
        }
    }
}

impl<'de> serde::Deserialize<'de> for Addresses {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(String),
            Many(Vec<String>),
        }
        Ok(
            match OneOrMany::deserialize(d).map_err(|_| {
                serde::de::Error::custom("expected \"host:port\" or a list [\"host:port\", …]")
            })? {
                OneOrMany::One(a) => Addresses::one(a),
                OneOrMany::Many(v) => Addresses(v.into_iter().filter(|a| !a.is_empty()).collect()),
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize, Default)]
    #[serde(deny_unknown_fields, default)]
    struct Demo {
        server: String,
        every: u64,
    }

    impl Validate for Demo {
        fn validate(&self) -> Result<(), ConfigError> {
            check_addresses(
                "server",
                std::iter::once(&self.server).filter(|s| !s.is_empty()),
            )?;
            ensure(self.every > 0, || "every must be at least 1".into())
        }
    }

    #[test]
    fn o5_errors_name_the_file_and_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("demo.toml");
        let missing = load::<Demo>(&p).unwrap_err().to_string();
        assert!(
            missing.contains("cannot read") && missing.contains("demo.toml"),
            "{missing}"
        );
        std::fs::write(&p, "sever = \"x:1\"\n").unwrap();
        let unknown = load::<Demo>(&p).unwrap_err().to_string();
        assert!(
            unknown.contains("demo.toml") && unknown.contains("sever"),
            "{unknown}"
        );
        std::fs::write(&p, "server = \"nohost\"\nevery = 1\n").unwrap();
        let bad = load::<Demo>(&p).unwrap_err().to_string();
        assert!(
            bad.contains("demo.toml") && bad.contains("server") && bad.contains("host:port"),
            "{bad}"
        );
        let made = load_or_create(&dir.path().join("new.toml"), "header line", || {
            Ok(Demo {
                server: "h:1".into(),
                every: 2,
            })
        })
        .unwrap();
        assert_eq!(
            made,
            Demo {
                server: "h:1".into(),
                every: 2
            }
        );
        let text = std::fs::read_to_string(dir.path().join("new.toml")).unwrap();
        assert!(text.starts_with("# header line\n"), "{text}");
    }
}
