//! A `tracing` layer that keeps every span that closes, with every field it was given, so
//! that a test can check what a service's spans say (pgbatch's own included) exactly.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

/// A span that closed: its name and every field recorded on it, as text (a string as it
/// is, anything else as its `Debug`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClosedSpan {
    /// The span's name.
    pub name: &'static str,
    /// Each field's last value.
    pub fields: BTreeMap<String, String>,
}

/// Collects the spans that close under it. Install it on a registry:
///
/// ```
/// use pgbatch_testing::SpanCollector;
/// use tracing_subscriber::prelude::*;
///
/// let spans = SpanCollector::default();
/// let _guard = tracing::subscriber::set_default(tracing_subscriber::registry().with(spans.clone()));
/// tracing::info_span!("work", items = 3).in_scope(|| {});
/// assert_eq!(spans.closed()[0].fields["items"], "3");
/// ```
#[derive(Debug, Clone, Default)]
pub struct SpanCollector(Arc<Mutex<Vec<ClosedSpan>>>);

impl SpanCollector {
    /// The spans closed so far, oldest first.
    pub fn closed(&self) -> Vec<ClosedSpan> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Forgets the spans closed so far.
    pub fn clear(&self) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).clear();
    }
}

/// The fields of a span still open.
struct Fields(BTreeMap<String, String>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> Layer<S> for SpanCollector {
    fn on_new_span(&self, attributes: &Attributes<'_>, id: &Id, context: Context<'_, S>) {
        let mut fields = Fields(BTreeMap::new());
        attributes.record(&mut fields);
        if let Some(span) = context.span(id) {
            span.extensions_mut().insert(fields);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, context: Context<'_, S>) {
        if let Some(span) = context.span(id)
            && let Some(fields) = span.extensions_mut().get_mut::<Fields>()
        {
            values.record(fields);
        }
    }

    fn on_close(&self, id: Id, context: Context<'_, S>) {
        if let Some(span) = context.span(&id) {
            let fields = span.extensions_mut().remove::<Fields>().map(|fields| fields.0).unwrap_or_default();
            self.0.lock().unwrap_or_else(PoisonError::into_inner).push(ClosedSpan { name: span.name(), fields });
        }
    }
}
