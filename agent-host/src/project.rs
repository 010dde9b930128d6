//! The project file, `hotsync.yaml`: what `hotsync attach` syncs where, so a project needs no
//! flags. Flags given on the command line override it.
//!
//! ```yaml
//! workload: deployment/web      # kubectl's TYPE/NAME
//! namespace: shop               # default: the context's namespace
//! context: kind-dev             # default: the kubeconfig's current context
//! container: app                # default: the pod's first container
//! sync: ./src:/app/src          # LOCAL:REMOTE, LOCAL relative to this file
//! ignore: ["*.log", "tmp/"]     # besides .gitignore, .hotsyncignore, .dockerignore
//! reload:                       # after each changeset: a signal to a process…
//!   signal: HUP
//!   process: gunicorn
//! # reload: { exec: "touch /tmp/restart" }   # …or a command in the synced directory
//! agentImage: hotsync-agent:0.1.0
//! transport: auto               # auto | port-forward | direct
//! rebuild: [Dockerfile, requirements.txt]   # files whose change needs a new image
//! ```

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize;

/// The file `hotsync attach` looks for in the current directory.
pub const FILE_NAME: &str = "hotsync.yaml";

/// A parsed project file. Paths are resolved against the file's directory.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Project {
    pub workload: Option<String>,
    pub namespace: Option<String>,
    pub context: Option<String>,
    pub container: Option<String>,
    pub sync: Option<String>,
    #[serde(default)]
    pub ignore: Vec<String>,
    pub reload: Option<ReloadSpec>,
    pub agent_image: Option<String>,
    pub transport: Option<String>,
    #[serde(default)]
    pub rebuild: Vec<String>,
    /// The directory the file is in (not read from the file).
    #[serde(skip)]
    pub dir: PathBuf,
}

/// `reload:` — a signal for a process, or a command.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReloadSpec {
    pub signal: Option<String>,
    pub process: Option<String>,
    pub exec: Option<String>,
}

/// A `LOCAL:REMOTE` sync mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncMapping {
    pub local: PathBuf,
    pub remote: String,
}

impl SyncMapping {
    /// Parses `LOCAL:REMOTE`; `LOCAL` is taken relative to `base`. REMOTE must be absolute.
    pub fn parse(text: &str, base: &Path) -> anyhow::Result<Self> {
        let Some((local, remote)) = text.rsplit_once(':') else {
            bail!("sync {text:?}: give LOCAL:REMOTE, e.g. ./src:/app/src");
        };
        if local.is_empty() {
            bail!("sync {text:?}: the local directory is missing (LOCAL:REMOTE, e.g. ./src:/app/src)");
        }
        if !remote.starts_with('/') {
            bail!("sync {text:?}: the container path {remote:?} must be absolute, e.g. /app");
        }
        Ok(Self { local: base.join(local), remote: remote.to_owned() })
    }
}

impl Project {
    /// Reads `path`. Errors name the file, the line and the key.
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let dir = path.parent().map_or_else(|| PathBuf::from("."), Path::to_owned);
        Self::parse(&text, &path.display().to_string(), &dir)
    }

    /// Reads `hotsync.yaml` in `dir` if there is one.
    pub fn find(dir: &Path) -> anyhow::Result<Option<Self>> {
        let path = dir.join(FILE_NAME);
        if path.exists() { Self::read(&path).map(Some) } else { Ok(None) }
    }

    /// Parses the text of a project file named `source`, whose paths are relative to `dir`.
    pub fn parse(text: &str, source: &str, dir: &Path) -> anyhow::Result<Self> {
        let mut project: Project = if text.trim().is_empty() {
            Project::default()
        } else {
            // serde_yaml's message names the key path and the line and column.
            serde_yaml::from_str(text).map_err(|e| anyhow::anyhow!("{source}: {e}"))?
        };
        dir.clone_into(&mut project.dir);
        project.check().with_context(|| format!("{source}: invalid project file"))?;
        Ok(project)
    }

    /// The sync mapping, if the file gives one.
    pub fn sync_mapping(&self) -> anyhow::Result<Option<SyncMapping>> {
        self.sync.as_deref().map(|s| SyncMapping::parse(s, &self.dir)).transpose()
    }

    fn check(&self) -> anyhow::Result<()> {
        self.sync_mapping().context("key `sync`")?;
        if let Some(r) = &self.reload {
            match (&r.signal, &r.process, &r.exec) {
                (Some(_), Some(_), None) | (None, None, Some(_)) => {}
                (Some(_), None, None) => bail!("key `reload`: `signal` needs `process`, the app's process name"),
                (None, Some(_), None) => bail!("key `reload`: `process` needs `signal`, e.g. HUP"),
                _ => bail!("key `reload`: give either `signal` + `process`, or `exec`"),
            }
        }
        if let Some(t) = &self.transport
            && !["auto", "port-forward", "direct"].contains(&t.as_str())
        {
            bail!("key `transport`: {t:?} is not one of auto, port-forward, direct");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> anyhow::Result<Project> {
        Project::parse(text, "hotsync.yaml", Path::new("/work/proj"))
    }

    #[test]
    fn a_full_file_parses_with_paths_relative_to_it() {
        let p = parse(
            "workload: deployment/web\nnamespace: shop\nsync: ./src:/app/src\nignore: ['*.log']\n\
             reload: {signal: HUP, process: gunicorn}\ntransport: port-forward\nrebuild: [Dockerfile]\n",
        )
        .unwrap();
        assert_eq!(p.workload.as_deref(), Some("deployment/web"));
        assert_eq!(p.namespace.as_deref(), Some("shop"));
        let m = p.sync_mapping().unwrap().unwrap();
        assert_eq!(m.local, Path::new("/work/proj/./src"));
        assert_eq!(m.remote, "/app/src");
        assert_eq!(p.ignore, ["*.log"]);
        assert_eq!(p.rebuild, ["Dockerfile"]);
    }

    #[test]
    fn an_unknown_key_is_named_with_its_line() {
        let err = parse("workload: deployment/web\nsyncc: ./src:/app\n").unwrap_err().to_string();
        assert!(err.contains("hotsync.yaml"), "{err}");
        assert!(err.contains("syncc"), "{err}");
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn a_wrong_type_is_named_with_its_key_and_line() {
        let err = parse("workload: deployment/web\nignore: 3\n").unwrap_err().to_string();
        assert!(err.contains("ignore"), "{err}");
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn bad_values_are_refused_with_the_key() {
        for (text, key) in [
            ("sync: ./src\n", "sync"),
            ("sync: ./src:app\n", "sync"),
            ("reload: {signal: HUP}\n", "reload"),
            ("reload: {signal: HUP, process: x, exec: y}\n", "reload"),
            ("transport: carrier-pigeon\n", "transport"),
        ] {
            let err = format!("{:#}", parse(text).unwrap_err());
            assert!(err.contains(key), "{text:?}: {err}");
        }
    }

    #[test]
    fn an_empty_file_is_an_empty_project() {
        assert_eq!(parse("").unwrap().workload, None);
    }
}
