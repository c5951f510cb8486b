"""Every stage result saves and loads through one base, with its kind checked on load."""

from moirestm.errors import MoireSTMError
from moirestm.explain.crossover import Crossover
from moirestm.learn.predict import Prediction

Crossover(u_c=2.4, method="tanh", u_c_tanh=2.4, width=0.3).save("crossover.h5")
print(Crossover.load("crossover.h5"))
try:
    Prediction.load("crossover.h5")
except MoireSTMError as exc:
    print("refused:", exc)
