//! Methods where nothing moves through this crate: passed to the async-nats value
//! in `self.inner`, with async-nats's own arguments, return and error types.

/// `async fn`s passed to `self.inner`. Generics go in `[..]`, where-clauses in
/// `where [..]`.
macro_rules! delegate_async {
    ($(
        $(#[$attr:meta])*
        fn $name:ident $([$($generics:tt)*])? (&self $(, $arg:ident: $ty:ty)* $(,)?) -> $ret:ty
        $(where [$($bounds:tt)*])?;
    )*) => {
        $(
            $(#[$attr])*
            pub async fn $name $(<$($generics)*>)? (&self $(, $arg: $ty)*) -> $ret
            $(where $($bounds)*)?
            {
                self.inner.$name($($arg),*).await
            }
        )*
    };
}

/// Plain `fn`s passed to `self.inner`.
macro_rules! delegate {
    ($(
        $(#[$attr:meta])*
        fn $name:ident $([$($generics:tt)*])? (&self $(, $arg:ident: $ty:ty)* $(,)?) -> $ret:ty;
    )*) => {
        $(
            $(#[$attr])*
            pub fn $name $(<$($generics)*>)? (&self $(, $arg: $ty)*) -> $ret {
                self.inner.$name($($arg),*)
            }
        )*
    };
}
