//! Serving the proxy on the unix socket the kubelet connects to.

use std::future::Future;

use k8s_cri::v1::image_service_server::ImageServiceServer;
use k8s_cri::v1::runtime_service_server::RuntimeServiceServer;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

use super::hooks::Hooks;
use super::proxy::CriProxy;
use super::upstream::MAX_CRI_MESSAGE_BYTES;

/// Why the CRI server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("CRI server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves both CRI services of `proxy` on `listener` until `shutdown`
/// completes; calls in flight then finish before this returns.
pub async fn serve<H: Hooks>(
    listener: UnixListener,
    proxy: CriProxy<H>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let runtime = RuntimeServiceServer::new(proxy.clone())
        .max_decoding_message_size(MAX_CRI_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_CRI_MESSAGE_BYTES);
    let images = ImageServiceServer::new(proxy)
        .max_decoding_message_size(MAX_CRI_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_CRI_MESSAGE_BYTES);
    tonic::transport::Server::builder()
        .add_service(runtime)
        .add_service(images)
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await?;
    Ok(())
}
