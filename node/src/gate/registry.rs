//! What the gate knows about the sandboxes and containers it measured,
//! rebuilt from the node log when `aver-node` restarts so that a restart
//! neither forgets a confidential pod nor lets an unmeasured one in.

use std::collections::{HashMap, HashSet};

use aver_node_log::{ImageIdentity, NodeEvent, NodeLogEntry, SandboxInfo};

/// A container the gate admitted.
#[derive(Debug, Clone)]
pub(super) struct Measured {
    pub sandbox_id: String,
    pub name: String,
    pub image: ImageIdentity,
}

#[derive(Debug, Default)]
pub(super) struct Registry {
    sandboxes: HashMap<String, SandboxInfo>,
    containers: HashMap<String, Measured>,
    /// Containers that registered a TLS key.
    keys: HashSet<String>,
}

impl Registry {
    /// The registry a node log describes.
    pub(super) fn from_log(entries: &[NodeLogEntry]) -> Self {
        let mut r = Self::default();
        for entry in entries {
            r.apply(&entry.event);
        }
        r
    }

    /// Records an event the gate has just extended.
    pub(super) fn apply(&mut self, event: &NodeEvent) {
        match event {
            NodeEvent::PodSandbox {
                sandbox_id,
                sandbox,
            } => {
                self.sandboxes.insert(sandbox_id.clone(), sandbox.clone());
            }
            NodeEvent::Container {
                sandbox_id,
                container_id,
                name,
                image,
                ..
            } => {
                self.containers.insert(
                    container_id.clone(),
                    Measured {
                        sandbox_id: sandbox_id.clone(),
                        name: name.clone(),
                        image: image.clone(),
                    },
                );
            }
            NodeEvent::TlsKey { container_id, .. } => {
                self.keys.insert(container_id.clone());
            }
            NodeEvent::AgentStart { .. } | NodeEvent::Access { .. } => {}
        }
    }

    pub(super) fn sandbox(&self, id: &str) -> Option<&SandboxInfo> {
        self.sandboxes.get(id)
    }

    /// A measured container and the sandbox it is in.
    pub(super) fn container(&self, id: &str) -> Option<(&Measured, &SandboxInfo)> {
        let c = self.containers.get(id)?;
        Some((c, self.sandboxes.get(&c.sandbox_id)?))
    }

    pub(super) fn has_key(&self, container_id: &str) -> bool {
        self.keys.contains(container_id)
    }
}
