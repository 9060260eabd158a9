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

    /// A file of the Dockerfile sync arrived whole. `.dockerignore` files travel in the same
    /// sync and are not Dockerfiles.
    pub fn record(&self, path: &str, data: &[u8]) {
        if is_ignore_file(path) {
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
    pub fn sync_unrequested(&self, paths: &[&str]) {
        for p in paths.iter().filter(|p| !is_ignore_file(p)) {
            self.state().problems.push(format!(
                "the daemon reused its copy of {p} from an earlier build, so buildbroker did not see it"
            ));
        }
    }

    /// The Dockerfiles read so far and the problems met.
    pub fn snapshot(&self) -> (Vec<Arc<ReadDockerfile>>, Vec<String>) {
        let s = self.state();
        (s.dockerfiles.clone(), s.problems.clone())
    }
}

fn is_ignore_file(path: &str) -> bool {
    path.ends_with(".dockerignore")
}
