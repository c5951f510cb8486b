"""Ad-hoc check: average of the stacked 64-px CNN runs and the per-pixel kernel ridge on the same splits.

Reads the session-4 study runs (``runs/study/cnn-group-bias-64*``, their ``eval-test/predictions.json``) and
refits the pixel kernel ridge (per-pixel standardisation) on each run's split.  Not a package model.

    python benchmarks/standard_ensemble_check.py
import json, numpy as np
from moirestm.learn.train import Run
from moirestm.learn.data import open_store, Normalizer, targets_of
from moirestm.learn.baselines import pixel_kernel_ridge
from moirestm.learn.evaluate import regression_metrics
runs=['cnn-group-bias-64']+[f'cnn-group-bias-64-seed{i}' for i in (1,2,3,4)]
for r in runs:
    run=Run.load(f'runs/study/{r}'); st=open_store('runs/standard.h5','bias_ev'); sp=run.split
    parts={p:sp.keys(p) for p in ('train','val','test')}
    raw={p:[np.asarray(st.image(k),np.float32) for k in ks] for p,ks in parts.items()}
    y={p:targets_of(st,ks,['hubbard_u_ev']) for p,ks in parts.items()}
    nz=Normalizer.fit(raw['train'],y['train'],['hubbard_u_ev'],64,standardise='pixel',channels=st.channels)
    x={p:nz.transform_images(raw[p]).reshape(len(raw[p]),-1).numpy().astype(np.float64) for p in parts}
    kr,vm,ch=pixel_kernel_ridge(x,y)
    preds={q['key']:q['hubbard_u_ev_pred'] for q in json.load(open(f'runs/study/{r}/eval-test/predictions.json'))}
    cnn=np.array([preds[k] for k in parts['test']])[:,None]
    out=[]
    for w in (0.0,0.5,1.0):
        m=regression_metrics(y['test'][:,0],(w*kr+(1-w)*cnn)[:,0]); out.append(f"w_kr={w}: {m['mae']:.3f}/{m['r2']:.4f}")
    print(r,' | '.join(out), flush=True)
