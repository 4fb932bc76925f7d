//! The run's store writer lives in the store crate ([`edm_store::Writer`]);
//! here it is plugged into the engine as its [`edm_delivery::Marker`].

use edm_model::RecipientId;
pub(crate) use edm_store::{StoreView, Writer};

/// The engine's [`edm_delivery::Marker`], backed by the run's writer: every
/// mark asked for while the writer commits is committed with the others.
pub(crate) struct WriterMarker(pub(crate) edm_store::writer::Marks);

impl edm_delivery::Marker for WriterMarker {
    fn mark(&self, id: RecipientId) -> edm_delivery::BoxFuture<'static, Result<(), String>> {
        Box::pin(self.0.mark(id))
    }
}

/// Queues an outcome for the writer. One it cannot take (its thread ended)
/// is not dropped silently: [`Writer::record`] keeps it as the run's failure
/// ([`Writer::failure`]), which stops the feeder and ends the run with the
/// store's error; here it is also logged where it happened.
pub(crate) async fn record(writer: &Writer, outcome: edm_store::Outcome) {
    if let Err(e) = writer.record(outcome).await {
        tracing::error!(error = %e, "an outcome was not recorded");
    }
}
