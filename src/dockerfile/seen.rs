//! The Dockerfiles one session has shown: filled by the session's Dockerfile watch as the
//! daemon fetches them, read by the secret and ssh services before they answer. Shared by the
//! session core and the services, so it lives below both.

use std::sync::{Arc, Mutex};

use super::reader::{ArgValues, Dockerfile, read};

/// One Dockerfile the daemon received in this session, as the reader understood it.
#[derive(Debug)]
pub struct ReadDockerfile {
    /// Its name in the synced directory (`Dockerfile`, `Build.dockerfile`).
    pub name: String,
    pub read: Dockerfile,
}

#[derive(Debug, Default)]
struct State {
    dockerfiles: Vec<Arc<ReadDockerfile>>,
    /// Why a sync did not show a Dockerfile whole.
    problems: Vec<String>,
}

/// What a session's Dockerfile syncs showed so far.
#[derive(Debug, Default)]
pub struct SessionDockerfiles {
    state: Mutex<State>,
}

impl SessionDockerfiles {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A file of the Dockerfile sync arrived whole. Its ignore file travels in the same sync
    /// (see [`IgnoreFiles`]) and is not a Dockerfile.
    pub fn record(&self, path: &str, data: &[u8], ignore: &IgnoreFiles) {
        if ignore.is_ignore_file(path) {
            return;
        }
        let text = String::from_utf8_lossy(data);
        let read = read(&text, ArgValues::Unknown);
        let name = path.rsplit('/').next().unwrap_or(path).to_string();
        self.state()
            .dockerfiles
            .push(Arc::new(ReadDockerfile { name, read }));
    }

    /// A sync could not be followed (compressed, oversized or malformed messages).
    pub fn sync_unreadable(&self, why: &str) {
        self.state().problems.push(format!(
            "buildbroker could not follow the Dockerfile sync ({why})"
        ));
    }

    /// Files the daemon already held from an earlier sync and did not fetch again.
    pub fn sync_unrequested(&self, paths: &[&str], ignore: &IgnoreFiles) {
        for p in paths.iter().filter(|p| !ignore.is_ignore_file(p)) {
            self.state().problems.push(format!(
                "the daemon reused its copy of {p} from an earlier build, so buildbroker did not see it"
            ));
        }
    }

    /// Files too large to read.
    pub fn sync_oversized(&self, paths: &[&str], ignore: &IgnoreFiles) {
        for p in paths.iter().filter(|p| !ignore.is_ignore_file(p)) {
            self.state()
                .problems
                .push(format!("{p} is too large for buildbroker to read"));
        }
    }

    /// The Dockerfiles read so far and the problems met.
    pub fn snapshot(&self) -> (Vec<Arc<ReadDockerfile>>, Vec<String>) {
        let s = self.state();
        (s.dockerfiles.clone(), s.problems.clone())
    }
}

/// Which files of a Dockerfile sync are ignore files. The daemon names the files it wants in
/// the `followpaths` metadata: the Dockerfile and `<Dockerfile>.dockerignore` (captured from
/// dockerd 26.1: `Build.dockerfile`, `Build.dockerfile.dockerignore`). Only a follow path that
/// is another one's name plus `.dockerignore` is an ignore file, so a Dockerfile built with
/// `-f x.dockerignore` is still read. Without the metadata, any `*.dockerignore` is one.
#[derive(Debug, Clone, Default)]
pub struct IgnoreFiles {
    names: Option<Vec<String>>,
}

impl IgnoreFiles {
    pub fn from_followpaths(followpaths: &[String]) -> Self {
        if followpaths.is_empty() {
            return IgnoreFiles { names: None };
        }
        let names = followpaths
            .iter()
            .filter(|p| {
                p.strip_suffix(".dockerignore")
                    .is_some_and(|base| followpaths.iter().any(|q| q == base))
            })
            .cloned()
            .collect();
        IgnoreFiles { names: Some(names) }
    }

    pub fn is_ignore_file(&self, path: &str) -> bool {
        match &self.names {
            Some(names) => names.iter().any(|n| n == path),
            None => path.ends_with(".dockerignore"),
        }
    }
}
