// regl-scatterplot with its dependencies (regl, pub-sub-es, ...) as one script that sets
// window.createScatterplot: Gradio's `head` loads plain scripts, not modules with imports.
import createScatterplot from 'regl-scatterplot';

window.createScatterplot = createScatterplot;
