//! A real OCI registry for the tests: the CNCF distribution registry (Debian's
//! `docker-registry`, installed by `.ci/run`), on an ephemeral loopback port, storing in a
//! temporary folder, optionally behind a password (htpasswd, bcrypt).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A running registry, killed when dropped.
pub struct Registry {
    child: Child,
    /// `127.0.0.1:PORT`
    pub host: String,
    folder: tempfile::TempDir,
}

impl Registry {
    /// A registry anyone may push to and pull from.
    pub fn start() -> Registry {
        Self::spawn(None)
    }

    /// A registry that takes only `user` with `password`.
    pub fn start_with_password(user: &str, password: &str) -> Registry {
        Self::spawn(Some((user, password)))
    }

    fn spawn(account: Option<(&str, &str)>) -> Registry {
        let folder = tempfile::tempdir().unwrap();
        let mut config = format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:0\n",
            folder.path().join("data").display()
        );
        if let Some((user, password)) = account {
            let htpasswd = folder.path().join("htpasswd");
            let hash = Command::new(super::compat_python())
                .args(["-c", "import bcrypt, sys; print(bcrypt.hashpw(sys.argv[1].encode(), bcrypt.gensalt()).decode())"])
                .arg(password)
                .output()
                .unwrap();
            assert!(hash.status.success(), "bcrypt: {}", String::from_utf8_lossy(&hash.stderr));
            std::fs::write(&htpasswd, format!("{user}:{}", String::from_utf8_lossy(&hash.stdout).trim()))
                .unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: edge-infer-tests\n    path: {}\n",
                htpasswd.display()
            ));
        }
        let config_path = folder.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let mut child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting docker-registry (Debian package docker-registry; .ci/run installs it)");
        // It logs where it listens; the rest of its log is drained so it never blocks.
        let stderr = child.stderr.take().unwrap();
        let (sender, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(at) = line.find("listening on ") {
                    let address: String = line[at + "listening on ".len()..]
                        .chars()
                        .take_while(|c| !c.is_whitespace() && *c != '"')
                        .collect();
                    let _ = sender.send(address);
                }
            }
        });
        let host = receiver.recv_timeout(Duration::from_secs(30)).expect("the registry did not start");
        Registry { child, host, folder }
    }

    /// `oci://127.0.0.1:PORT/{repository}`
    pub fn reference(&self, repository: &str) -> String {
        format!("oci://{}/{repository}", self.host)
    }

    /// Where the registry keeps the blob `digest` (`sha256:…`), to damage it.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.folder.path().join(format!("data/docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]))
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
