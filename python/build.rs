// Links libtorch as every Birdbone binary on it must (libtorch_cuda explicitly, or CUDA is
// invisible), with the rpath of the torch installation the build saw: the one `import torch`
// loads, so the loader finds the libraries already in the process and maps no second copy.
include!("../build-support/link-torch.rs");
