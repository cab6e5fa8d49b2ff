//! The gRPC codec of every Vigo service: protobuf, as `tonic_prost::ProstCodec`, with small
//! per-call buffers.
//!
//! tonic's default gives every call an 8 KiB encode buffer (and decode buffer) up front. Vigo's
//! messages are mostly a few hundred bytes, and a held watch keeps its encoder for as long as
//! the envoy stays connected: at tens of thousands of held connections the default alone would
//! cost hundreds of MiB. Buffers here start at [`BUFFER_BYTES`] and grow only for the calls
//! that need it (a bundle, a traits upload).

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstDecoder, ProstEncoder};

/// Initial size of a call's encode and decode buffer.
pub const BUFFER_BYTES: usize = 512;

/// When a streamed response has this much encoded and unsent, it is flushed (tonic's default).
const YIELD_THRESHOLD_BYTES: usize = 32 * 1024;

/// See the module docs.
#[derive(Debug, Clone)]
pub struct VigoCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for VigoCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

fn settings() -> BufferSettings {
    BufferSettings::new(BUFFER_BYTES, YIELD_THRESHOLD_BYTES)
}

impl<T, U> Codec for VigoCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(settings())
    }
}
