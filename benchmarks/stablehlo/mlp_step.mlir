// The MLP train step (784 -> 100 ReLU -> 10, batch 200, mean softmax cross-entropy, SGD with learning rate 0.1),
// written by hand in StableHLO: the reference the iree backend's jitted step is compared with in benchmarks/bench.py.
// Weights in PyTorch's layout (w1: 100x784, w2: 10x100); returns the updated weights and the loss before the update.
func.func @main(%w1: tensor<100x784xf32>, %b1: tensor<100xf32>, %w2: tensor<10x100xf32>, %b2: tensor<10xf32>,
                %x: tensor<200x784xf32>, %y: tensor<200xi64>)
    -> (tensor<100x784xf32>, tensor<100xf32>, tensor<10x100xf32>, tensor<10xf32>, tensor<f32>) {
  // forward
  %h_mm = stablehlo.dot_general %x, %w1, contracting_dims = [1] x [1] : (tensor<200x784xf32>, tensor<100x784xf32>) -> tensor<200x100xf32>
  %b1_rows = stablehlo.broadcast_in_dim %b1, dims = [1] : (tensor<100xf32>) -> tensor<200x100xf32>
  %h_pre = stablehlo.add %h_mm, %b1_rows : tensor<200x100xf32>
  %zeros_h = stablehlo.constant dense<0.0> : tensor<200x100xf32>
  %h = stablehlo.maximum %h_pre, %zeros_h : tensor<200x100xf32>
  %o_mm = stablehlo.dot_general %h, %w2, contracting_dims = [1] x [1] : (tensor<200x100xf32>, tensor<10x100xf32>) -> tensor<200x10xf32>
  %b2_rows = stablehlo.broadcast_in_dim %b2, dims = [1] : (tensor<10xf32>) -> tensor<200x10xf32>
  %logits = stablehlo.add %o_mm, %b2_rows : tensor<200x10xf32>
  // log-softmax over the classes
  %minus_inf = stablehlo.constant dense<0xFF800000> : tensor<f32>
  %zero = stablehlo.constant dense<0.0> : tensor<f32>
  %row_max = stablehlo.reduce(%logits init: %minus_inf) applies stablehlo.maximum across dimensions = [1] : (tensor<200x10xf32>, tensor<f32>) -> tensor<200xf32>
  %row_max_b = stablehlo.broadcast_in_dim %row_max, dims = [0] : (tensor<200xf32>) -> tensor<200x10xf32>
  %shifted = stablehlo.subtract %logits, %row_max_b : tensor<200x10xf32>
  %exps = stablehlo.exponential %shifted : tensor<200x10xf32>
  %sums = stablehlo.reduce(%exps init: %zero) applies stablehlo.add across dimensions = [1] : (tensor<200x10xf32>, tensor<f32>) -> tensor<200xf32>
  %log_sums = stablehlo.log %sums : tensor<200xf32>
  %log_sums_b = stablehlo.broadcast_in_dim %log_sums, dims = [0] : (tensor<200xf32>) -> tensor<200x10xf32>
  %log_probs = stablehlo.subtract %shifted, %log_sums_b : tensor<200x10xf32>
  // the loss: minus the mean log-probability of the targets
  %classes = stablehlo.iota dim = 1 : tensor<200x10xi64>
  %targets = stablehlo.broadcast_in_dim %y, dims = [0] : (tensor<200xi64>) -> tensor<200x10xi64>
  %is_target = stablehlo.compare EQ, %classes, %targets, SIGNED : (tensor<200x10xi64>, tensor<200x10xi64>) -> tensor<200x10xi1>
  %one_hot = stablehlo.convert %is_target : (tensor<200x10xi1>) -> tensor<200x10xf32>
  %picked = stablehlo.multiply %one_hot, %log_probs : tensor<200x10xf32>
  %picked_sum = stablehlo.reduce(%picked init: %zero) applies stablehlo.add across dimensions = [0, 1] : (tensor<200x10xf32>, tensor<f32>) -> tensor<f32>
  %minus_inv_batch = stablehlo.constant dense<-5.000000e-03> : tensor<f32>
  %loss = stablehlo.multiply %picked_sum, %minus_inv_batch : tensor<f32>
  // backward: d loss / d logits = (softmax - one_hot) / batch
  %probs = stablehlo.exponential %log_probs : tensor<200x10xf32>
  %diff = stablehlo.subtract %probs, %one_hot : tensor<200x10xf32>
  %inv_batch = stablehlo.constant dense<5.000000e-03> : tensor<200x10xf32>
  %d_logits = stablehlo.multiply %diff, %inv_batch : tensor<200x10xf32>
  %d_w2 = stablehlo.dot_general %d_logits, %h, contracting_dims = [0] x [0] : (tensor<200x10xf32>, tensor<200x100xf32>) -> tensor<10x100xf32>
  %d_b2 = stablehlo.reduce(%d_logits init: %zero) applies stablehlo.add across dimensions = [0] : (tensor<200x10xf32>, tensor<f32>) -> tensor<10xf32>
  %d_h = stablehlo.dot_general %d_logits, %w2, contracting_dims = [1] x [0] : (tensor<200x10xf32>, tensor<10x100xf32>) -> tensor<200x100xf32>
  %active = stablehlo.compare GT, %h_pre, %zeros_h, FLOAT : (tensor<200x100xf32>, tensor<200x100xf32>) -> tensor<200x100xi1>
  %d_h_pre = stablehlo.select %active, %d_h, %zeros_h : tensor<200x100xi1>, tensor<200x100xf32>
  %d_w1 = stablehlo.dot_general %d_h_pre, %x, contracting_dims = [0] x [0] : (tensor<200x100xf32>, tensor<200x784xf32>) -> tensor<100x784xf32>
  %d_b1 = stablehlo.reduce(%d_h_pre init: %zero) applies stablehlo.add across dimensions = [0] : (tensor<200x100xf32>, tensor<f32>) -> tensor<100xf32>
  // SGD
  %lr_w1 = stablehlo.constant dense<1.000000e-01> : tensor<100x784xf32>
  %lr_b1 = stablehlo.constant dense<1.000000e-01> : tensor<100xf32>
  %lr_w2 = stablehlo.constant dense<1.000000e-01> : tensor<10x100xf32>
  %lr_b2 = stablehlo.constant dense<1.000000e-01> : tensor<10xf32>
  %step_w1 = stablehlo.multiply %d_w1, %lr_w1 : tensor<100x784xf32>
  %step_b1 = stablehlo.multiply %d_b1, %lr_b1 : tensor<100xf32>
  %step_w2 = stablehlo.multiply %d_w2, %lr_w2 : tensor<10x100xf32>
  %step_b2 = stablehlo.multiply %d_b2, %lr_b2 : tensor<10xf32>
  %w1_new = stablehlo.subtract %w1, %step_w1 : tensor<100x784xf32>
  %b1_new = stablehlo.subtract %b1, %step_b1 : tensor<100xf32>
  %w2_new = stablehlo.subtract %w2, %step_w2 : tensor<10x100xf32>
  %b2_new = stablehlo.subtract %b2, %step_b2 : tensor<10xf32>
  return %w1_new, %b1_new, %w2_new, %b2_new, %loss : tensor<100x784xf32>, tensor<100xf32>, tensor<10x100xf32>, tensor<10xf32>, tensor<f32>
}
