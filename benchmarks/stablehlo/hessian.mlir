// The Hessian of f(x) = sum(tanh(x) ** 3) for x of 100 floats, written by hand in StableHLO: the reference the iree
// backend's jitted slope.hessian is compared with in benchmarks/bench.py. With t = tanh(x), f is a sum of functions
// of one element each, so its Hessian is diagonal: H_ii = d/dx (3 t^2 (1 - t^2)) = (6 t - 12 t^3)(1 - t^2).
func.func @main(%x: tensor<100xf32>) -> tensor<100x100xf32> {
  %t = stablehlo.tanh %x : tensor<100xf32>
  %t2 = stablehlo.multiply %t, %t : tensor<100xf32>
  %t3 = stablehlo.multiply %t2, %t : tensor<100xf32>
  %six = stablehlo.constant dense<6.0> : tensor<100xf32>
  %twelve = stablehlo.constant dense<12.0> : tensor<100xf32>
  %one = stablehlo.constant dense<1.0> : tensor<100xf32>
  %a = stablehlo.multiply %six, %t : tensor<100xf32>
  %b = stablehlo.multiply %twelve, %t3 : tensor<100xf32>
  %c = stablehlo.subtract %a, %b : tensor<100xf32>
  %sech2 = stablehlo.subtract %one, %t2 : tensor<100xf32>
  %diagonal = stablehlo.multiply %c, %sech2 : tensor<100xf32>
  %rows = stablehlo.iota dim = 0 : tensor<100x100xi32>
  %columns = stablehlo.iota dim = 1 : tensor<100x100xi32>
  %on_diagonal = stablehlo.compare EQ, %rows, %columns, SIGNED : (tensor<100x100xi32>, tensor<100x100xi32>) -> tensor<100x100xi1>
  %values = stablehlo.broadcast_in_dim %diagonal, dims = [0] : (tensor<100xf32>) -> tensor<100x100xf32>
  %zeros = stablehlo.constant dense<0.0> : tensor<100x100xf32>
  %hessian = stablehlo.select %on_diagonal, %values, %zeros : tensor<100x100xi1>, tensor<100x100xf32>
  return %hessian : tensor<100x100xf32>
}
