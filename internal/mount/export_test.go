package mount

// MountOverlayLegacy is the lowerdir= fallback that kernels without
// lowerdir+ get, exported so that this kernel's tests exercise it too.
var MountOverlayLegacy = mountOverlayLegacy
