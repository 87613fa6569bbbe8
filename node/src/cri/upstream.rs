//! The CRI clients for the runtime the proxy forwards to (containerd's CRI
//! socket).

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{Image, ImageSpec, ImageStatusRequest};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::Status;

use super::hooks::ImageLookup;

/// Largest CRI message either way, as the kubelet allows (16 MiB): lists of
/// containers or images on a busy node exceed tonic's 4 MiB default.
pub const MAX_CRI_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Clients of the upstream `RuntimeService` and `ImageService`, sharing one
/// connection. Cheap to clone; every call works on its own clone (tonic
/// clients take `&mut self`).
#[derive(Debug, Clone)]
pub struct Upstream {
    socket: PathBuf,
    pub(crate) runtime: RuntimeServiceClient<Channel>,
    pub(crate) images: ImageServiceClient<Channel>,
}

impl Upstream {
    /// Clients for the CRI socket at `socket`. The connection is made on
    /// first use and remade after it breaks, so the proxy can start before
    /// containerd does and outlive a containerd restart; until then calls
    /// fail with `Unavailable`, as they would against containerd itself.
    pub fn connect_lazy(socket: impl AsRef<Path>) -> Self {
        let socket = socket.as_ref().to_path_buf();
        let path = socket.clone();
        // The URI is required by the transport but never resolved: the
        // connector below ignores it.
        let channel =
            Endpoint::from_static("http://localhost").connect_with_connector_lazy(
                tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?))
                    }
                }),
            );
        Self {
            socket,
            runtime: RuntimeServiceClient::new(channel.clone())
                .max_decoding_message_size(MAX_CRI_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_CRI_MESSAGE_BYTES),
            images: ImageServiceClient::new(channel)
                .max_decoding_message_size(MAX_CRI_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_CRI_MESSAGE_BYTES),
        }
    }

    /// The upstream socket path, for logs.
    pub fn socket(&self) -> &Path {
        &self.socket
    }
}

#[async_trait::async_trait]
impl ImageLookup for Upstream {
    async fn image_status(&self, image: &ImageSpec) -> Result<Option<Image>, Status> {
        let mut client = self.images.clone();
        let response = client
            .image_status(ImageStatusRequest {
                image: Some(image.clone()),
                verbose: false,
            })
            .await?;
        Ok(response.into_inner().image)
    }
}
