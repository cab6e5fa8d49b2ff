//! vigosrv library.
