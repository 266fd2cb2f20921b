//! The Trias validator: answers whether a token allows an action (not yet built; see issue 3).
